//! The KVM VM: guest memory slots, the in-kernel interrupt controllers and PIT, and the
//! addresses KVM needs for its own use on x86.

use std::sync::Arc;

use kvm_bindings::{
    KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::memory::GuestMemory;

/// Why the VM could not be set up; each names the KVM call that failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM_CREATE_VM failed.
    #[error("cannot create the VM (KVM_CREATE_VM): {0}")]
    Create(#[source] kvm_ioctls::Error),
    /// KVM_GET_DIRTY_LOG failed.
    #[error("cannot read the dirty-page log of memory slot {slot}: {source}")]
    DirtyLog {
        /// The slot.
        slot: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("cannot register guest memory slot {slot} with KVM: {source}")]
    MemorySlot {
        /// The slot.
        slot: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_TSS_ADDR or KVM_SET_IDENTITY_MAP_ADDR failed.
    #[error("cannot place KVM's TSS/identity map: {0}")]
    SystemAddresses(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("cannot create the in-kernel interrupt controllers: {0}")]
    Irqchip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("cannot create the in-kernel PIT: {0}")]
    Pit(#[source] kvm_ioctls::Error),
    /// A read-only device region, and KVM without read-only memory slots.
    #[error("{0}: read-only device memory needs KVM_CAP_READONLY_MEM, which this KVM lacks")]
    NoReadonlyMemory(String),
}

/// Device memory: a range of guest physical addresses backed by a mapping a device made
/// (a virtio-pmem file), given to KVM as a memory slot of its own after RAM's, read-only
/// if the mapping is. Not guest RAM: not in [`GuestMemory`] (so not in the memory maps,
/// snapshots' memory files or dirty-page logs), and no dirty logging.
#[derive(Debug, Clone)]
pub struct DeviceMemory {
    /// Guest physical address.
    pub guest_addr: u64,
    /// The mapping; the VM's owner keeps a clone of it for as long as the VM exists.
    pub backing: Arc<pmem::Backing>,
}

/// Create a VM with `mem` as its RAM, `devices` as its device memory (slots after RAM's),
/// the in-kernel PIC/IOAPIC/LAPIC and PIT. With `track_dirty_pages`, KVM logs the pages
/// the guest writes to RAM (for diff snapshots; read with [`take_dirty_log`]).
///
/// Memory is registered before the irqchip exists: KVM makes slot changes far costlier
/// once an irqchip is present (~5 ms against ~0.1 ms on the project's machines).
pub fn create_vm(
    kvm: &Kvm,
    mem: &GuestMemory,
    track_dirty_pages: bool,
    devices: &[DeviceMemory],
) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(VmError::Create)?;
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let region_desc = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: if track_dirty_pages {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`, which
        // the VMM keeps alive (and unmoved) for as long as the VM exists.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|source| VmError::MemorySlot { slot, source })?;
    }
    for (i, device) in devices.iter().enumerate() {
        let slot = (mem.num_regions() + i) as u32;
        let backing = &device.backing;
        if backing.read_only() && !kvm.check_extension(Cap::ReadonlyMem) {
            return Err(VmError::NoReadonlyMemory(
                backing.path().display().to_string(),
            ));
        }
        let region_desc = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: device.guest_addr,
            memory_size: backing.len(),
            userspace_addr: backing.host_addr(),
            flags: if backing.read_only() {
                KVM_MEM_READONLY
            } else {
                0
            },
        };
        // SAFETY: the backing is a live mapping of `memory_size` bytes; the VM's owner
        // keeps a clone of its Arc for as long as the VM exists (`DeviceMemory`). A
        // read-only mapping gets a read-only slot: KVM never writes it.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|source| VmError::MemorySlot { slot, source })?;
    }
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(VmError::SystemAddresses)?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(VmError::SystemAddresses)?;
    vm.create_irq_chip().map_err(VmError::Irqchip)?;
    // The dummy speaker lets KVM answer port 0x61 itself.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(VmError::Pit)?;
    Ok(vm)
}

/// The pages the guest wrote since the last call (or since the VM started), one bitmap
/// per memory slot (bit n of word w: page 64w+n of the slot). KVM clears the log as it
/// reads it. The VM must have been created with dirty-page tracking.
pub fn take_dirty_log(vm: &VmFd, mem: &GuestMemory) -> Result<Vec<Vec<u64>>, VmError> {
    mem.iter()
        .enumerate()
        .map(|(slot, region)| {
            let slot = slot as u32;
            vm.get_dirty_log(slot, region.len() as usize)
                .map_err(|source| VmError::DirtyLog { slot, source })
        })
        .collect()
}
