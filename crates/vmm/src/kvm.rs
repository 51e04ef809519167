//! Access to `/dev/kvm`: opening it with errors a user can act on, and checking that the
//! host's KVM has every API and capability Vireo relies on before anything is built.

use kvm_ioctls::{Cap, Kvm};

/// KVM's stable API version; every kernel since 2.6.22 reports it.
const KVM_API_VERSION: i32 = 12;

/// Capabilities the VM set-up needs, with the reason each is needed.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "in-kernel interrupt controllers"),
    (Cap::UserMemory, "guest memory regions"),
    (Cap::SetTssAddr, "the TSS address for real-mode emulation"),
    (Cap::SetIdentityMapAddr, "the identity-map page"),
    (Cap::Pit2, "the in-kernel PIT"),
    (Cap::ExtCpuid, "CPUID set-up"),
    (Cap::Irqfd, "interrupts from eventfds"),
    (Cap::Ioeventfd, "doorbells as eventfds"),
    (Cap::ImmediateExit, "stopping vCPUs without races"),
    (Cap::MpState, "vCPU wake-up states"),
    (Cap::VcpuEvents, "vCPU event state"),
];

/// Why KVM could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` does not exist.
    #[error(
        "/dev/kvm does not exist: this host has no KVM (enable virtualization in the firmware \
         and load the kvm_intel or kvm_amd module)"
    )]
    NoDevice,
    /// `/dev/kvm` exists but this user may not open it.
    #[error(
        "permission denied opening /dev/kvm: add this user to the group owning it \
         (usually 'kvm': `sudo usermod -aG kvm $USER`, then log in again)"
    )]
    PermissionDenied,
    /// Any other failure to open `/dev/kvm`.
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] kvm_ioctls::Error),
    /// The kernel speaks another KVM API version.
    #[error("KVM API version {0} is not supported (expected {KVM_API_VERSION})")]
    ApiVersion(i32),
    /// A capability Vireo needs is missing.
    #[error("KVM lacks the capability {cap} (needed for {why})")]
    MissingCap {
        /// The capability's name.
        cap: String,
        /// What Vireo uses it for.
        why: &'static str,
    },
}

/// An open, checked `/dev/kvm`.
pub struct KvmContext {
    kvm: Kvm,
    max_vcpus: usize,
}

impl KvmContext {
    /// Open `/dev/kvm` and check its API version and capabilities.
    pub fn new() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(|e| match e.errno() {
            libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::NoDevice,
            libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
            _ => KvmError::Open(e),
        })?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(KvmError::ApiVersion(version));
        }
        if let Some((cap, why)) = REQUIRED_CAPS.iter().find(|(c, _)| !kvm.check_extension(*c)) {
            return Err(KvmError::MissingCap {
                cap: format!("{cap:?}"),
                why,
            });
        }
        let max_vcpus = kvm.get_max_vcpus();
        Ok(Self { kvm, max_vcpus })
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Most vCPUs one VM may have on this host.
    pub fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }
}
