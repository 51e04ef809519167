//! Access to `/dev/kvm`: opening it with errors a user can act on, and checking that the
//! host's KVM has every API and capability Vireo relies on before anything is built.

use api::cpu_template::KvmCapability;
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
    /// A capability the CPU template's `kvm_capabilities` asks for is missing.
    #[error("KVM lacks the capability {0}, which the CPU template's kvm_capabilities requires")]
    MissingTemplateCap(u32),
}

/// An open, checked `/dev/kvm`.
pub struct KvmContext {
    kvm: Kvm,
    max_vcpus: usize,
}

/// Check what a KVM handle reports: its API `version`, and `has_cap` (by number) for
/// each capability Vireo needs, as a CPU template's `kvm_capabilities` change that list:
/// in order, `"N"` adds N and `"!N"` takes N out (Firecracker's rule).
fn check_kvm(
    version: i32,
    has_cap: impl Fn(u32) -> bool,
    template: &[KvmCapability],
) -> Result<(), KvmError> {
    if version != KVM_API_VERSION {
        return Err(KvmError::ApiVersion(version));
    }
    let mut checked: Vec<u32> = REQUIRED_CAPS.iter().map(|(c, _)| *c as u32).collect();
    for cap in template {
        match *cap {
            KvmCapability::Check(n) if !checked.contains(&n) => checked.push(n),
            KvmCapability::Check(_) => {}
            KvmCapability::Uncheck(n) => checked.retain(|&c| c != n),
        }
    }
    match checked.into_iter().find(|&n| !has_cap(n)) {
        None => Ok(()),
        Some(n) => Err(match REQUIRED_CAPS.iter().find(|(c, _)| *c as u32 == n) {
            Some((cap, why)) => KvmError::MissingCap {
                cap: format!("{cap:?}"),
                why,
            },
            None => KvmError::MissingTemplateCap(n),
        }),
    }
}

impl KvmContext {
    /// Open `/dev/kvm` and check its API version and capabilities.
    pub fn new() -> Result<Self, KvmError> {
        Self::open(c"/dev/kvm")
    }

    /// [`KvmContext::new`], with the capability checks a CPU template changes.
    pub fn with_capabilities(template: &[KvmCapability]) -> Result<Self, KvmError> {
        Self::open_checking(c"/dev/kvm", template)
    }

    /// Open the KVM device at `path` and check it.
    pub fn open(path: &std::ffi::CStr) -> Result<Self, KvmError> {
        Self::open_checking(path, &[])
    }

    fn open_checking(path: &std::ffi::CStr, template: &[KvmCapability]) -> Result<Self, KvmError> {
        let kvm = Kvm::new_with_path(path).map_err(|e| match e.errno() {
            libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::NoDevice,
            libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
            _ => KvmError::Open(e),
        })?;
        check_kvm(
            kvm.get_api_version(),
            |cap| kvm.check_extension_raw(libc::c_ulong::from(cap)) > 0,
            template,
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_says_there_is_no_kvm() {
        let err = KvmContext::open(c"/nonexistent/kvm").err().unwrap();
        assert!(matches!(err, KvmError::NoDevice));
        assert!(
            err.to_string()
                .contains("load the kvm_intel or kvm_amd module"),
            "{err}"
        );
    }

    #[test]
    fn a_device_that_is_not_kvm_is_refused() {
        // /dev/null opens, but answers no KVM ioctl: its "API version" is an error (-1).
        let err = KvmContext::open(c"/dev/null").err().unwrap();
        assert!(matches!(err, KvmError::ApiVersion(-1)), "{err}");
        assert_eq!(
            err.to_string(),
            "KVM API version -1 is not supported (expected 12)"
        );
    }

    #[test]
    fn permission_message_names_the_group() {
        let text = KvmError::PermissionDenied.to_string();
        assert!(
            text.contains("'kvm'") && text.contains("usermod -aG kvm"),
            "{text}"
        );
    }

    #[test]
    fn every_required_capability_is_checked() {
        assert!(check_kvm(KVM_API_VERSION, |_| true, &[]).is_ok());
        assert!(matches!(
            check_kvm(11, |_| true, &[]),
            Err(KvmError::ApiVersion(11))
        ));
        for (missing, why) in REQUIRED_CAPS {
            let err = check_kvm(KVM_API_VERSION, |cap| cap != *missing as u32, &[]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("KVM lacks the capability {missing:?} (needed for {why})")
            );
        }
    }

    #[test]
    fn a_template_adds_and_removes_capability_checks() {
        // KVM_CAP_IRQCHIP is one Vireo checks.
        let irqchip = Cap::Irqchip as u32;
        let lacks = |n: u32| move |cap: u32| cap != n;
        let err = check_kvm(KVM_API_VERSION, lacks(irqchip), &[]).unwrap_err();
        assert!(matches!(err, KvmError::MissingCap { .. }), "{err}");
        // "!0" takes it out of the checks.
        let uncheck = [KvmCapability::Uncheck(irqchip)];
        assert!(check_kvm(KVM_API_VERSION, lacks(irqchip), &uncheck).is_ok());
        // "171" adds one.
        let check = [KvmCapability::Check(171)];
        assert!(check_kvm(KVM_API_VERSION, |_| true, &check).is_ok());
        let err = check_kvm(KVM_API_VERSION, lacks(171), &check).unwrap_err();
        assert_eq!(
            err.to_string(),
            "KVM lacks the capability 171, which the CPU template's kvm_capabilities requires"
        );
        // In order: added then removed is not checked; removed then added is.
        let both = [KvmCapability::Check(171), KvmCapability::Uncheck(171)];
        assert!(check_kvm(KVM_API_VERSION, lacks(171), &both).is_ok());
        let both = [KvmCapability::Uncheck(171), KvmCapability::Check(171)];
        assert!(check_kvm(KVM_API_VERSION, lacks(171), &both).is_err());
    }
}
