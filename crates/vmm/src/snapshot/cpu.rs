//! The state of one vCPU, read from and written back to KVM.
//!
//! Saved while the vCPU is paused (outside KVM_RUN), on its own thread. The order of the
//! writes on restore matters to KVM:
//! - CPUID first: KVM derives what the other state may contain from it (XSAVE features,
//!   MSRs that exist);
//! - the multiprocessing state before the registers (an AP waiting for SIPI must stay so);
//! - MSRs after the special registers and before the events;
//! - the LAPIC before the events, so a pending interrupt finds its controller.

use kvm_bindings::{
    CpuId, Msrs, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Entries asked of KVM_GET_CPUID2 (KVM_MAX_CPUID_ENTRIES).
const CPUID_ENTRIES: usize = 256;
/// MSRs read or written per KVM call (KVM's own limit is higher; this keeps each call small).
const MSR_BATCH: usize = 64;

/// Why a vCPU's state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("vCPU state ({what}): {source}")]
pub struct CpuStateError {
    /// Which part of the state.
    pub what: &'static str,
    /// KVM's error.
    #[source]
    pub source: kvm_ioctls::Error,
}

fn err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuStateError {
    move |source| CpuStateError { what, source }
}

/// Everything KVM keeps about one vCPU that a guest can observe.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's index (its APIC id).
    pub index: u32,
    /// The CPUID the vCPU was created with.
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    /// Running, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state.
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM could read, as (index, value).
    pub msrs: Vec<(u32, u64)>,
    /// Pending exceptions, interrupts and NMIs.
    pub events: kvm_vcpu_events,
    /// The TSC frequency in kHz, if KVM could tell.
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("index", &self.index)
            .field("rip", &self.regs.rip)
            .field("mp_state", &self.mp_state.mp_state)
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// Read the values of `indices` from the vCPU; the MSRs KVM refuses to read are left out.
pub fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, CpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MSR_BATCH)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| CpuStateError {
            what: "MSR list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        // KVM reads in order and stops at the first MSR it cannot read.
        let read = fd.get_msrs(&mut msrs).map_err(err("MSRs"))?;
        out.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // Skip the one that failed (if any) and go on after it.
        let consumed = (read + 1).min(batch.len());
        if read < batch.len() {
            log::debug!("MSR {:#x} cannot be read; not saved", batch[read]);
        }
        rest = &rest[consumed..];
    }
    Ok(out)
}

/// Write `msrs` to the vCPU, in batches; an MSR KVM refuses is an error.
fn write_msrs(fd: &VcpuFd, msrs: &[(u32, u64)]) -> Result<(), CpuStateError> {
    for batch in msrs.chunks(MSR_BATCH) {
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| CpuStateError {
            what: "MSR list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let written = fd.set_msrs(&msrs).map_err(err("MSRs"))?;
        if written != batch.len() {
            log::warn!(
                "KVM refused MSR {:#x} on restore; it keeps its reset value",
                batch[written].0
            );
            // Go on with the ones after it.
            write_msrs(fd, &batch[written + 1..])?;
        }
    }
    Ok(())
}

impl VcpuState {
    /// Read the state of the paused vCPU `index`; `msr_indices` are the MSRs to save
    /// (KVM's list, [`crate::kvm::KvmContext::msrs_to_save`]).
    pub fn save(fd: &VcpuFd, index: u32, msr_indices: &[u32]) -> Result<Self, CpuStateError> {
        let cpuid = fd.get_cpuid2(CPUID_ENTRIES).map_err(err("CPUID"))?;
        // Read the events first: reading the MP state may process pending events.
        let events = fd.get_vcpu_events().map_err(err("events"))?;
        Ok(Self {
            index,
            cpuid: cpuid.as_slice().to_vec(),
            mp_state: fd.get_mp_state().map_err(err("MP state"))?,
            regs: fd.get_regs().map_err(err("registers"))?,
            sregs: fd.get_sregs().map_err(err("special registers"))?,
            xsave: fd.get_xsave().map_err(err("XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(err("XCRs"))?,
            debug_regs: fd.get_debug_regs().map_err(err("debug registers"))?,
            lapic: fd.get_lapic().map_err(err("LAPIC"))?,
            msrs: read_msrs(fd, msr_indices)?,
            events,
            tsc_khz: fd.get_tsc_khz().ok(),
        })
    }

    /// Write this state into a freshly created vCPU.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), CpuStateError> {
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| CpuStateError {
            what: "CPUID",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        fd.set_cpuid2(&cpuid).map_err(err("CPUID"))?;
        if let Some(khz) = self.tsc_khz
            && fd.get_tsc_khz().ok() != Some(khz)
            && let Err(e) = fd.set_tsc_khz(khz)
        {
            log::warn!(
                "vcpu{}: cannot set the TSC to {khz} kHz ({e}); the guest's clock may drift",
                self.index
            );
        }
        fd.set_mp_state(self.mp_state).map_err(err("MP state"))?;
        fd.set_regs(&self.regs).map_err(err("registers"))?;
        fd.set_sregs(&self.sregs)
            .map_err(err("special registers"))?;
        // SAFETY: `self.xsave` is a whole `kvm_xsave` (4 KiB). KVM reads as many bytes as
        // its uabi XSAVE size, which exceeds 4 KiB only when the VMM asked for dynamic
        // XSAVE features (AMX) with arch_prctl; Vireo never does.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(err("XSAVE"))?;
        fd.set_xcrs(&self.xcrs).map_err(err("XCRs"))?;
        fd.set_debug_regs(&self.debug_regs)
            .map_err(err("debug registers"))?;
        fd.set_lapic(&self.lapic).map_err(err("LAPIC"))?;
        write_msrs(fd, &self.msrs)?;
        fd.set_vcpu_events(&self.events).map_err(err("events"))?;
        Ok(())
    }
}
