//! CPU templates applied to the vCPUs, with Firecracker's semantics.
//!
//! - A static template is first checked against the host (its vendor, then its CPU
//!   model, from leaves 0 and 1 of KVM's supported CPUID) and becomes the custom
//!   template [`super::static_templates`] writes for it.
//! - The CPUID modifiers change KVM's supported CPUID once, before the per-vCPU
//!   normalisation of [`super::cpuid`], which wins where both touch a bit (APIC ids,
//!   topology, the hypervisor bit...). A modifier of a leaf and subleaf KVM does not
//!   report is an error: the template was written for another host.
//! - The MSR modifiers change the value KVM gives each MSR once the vCPU has its CPUID
//!   (KVM derives which MSRs exist, and their defaults, from it); the boot MSRs are set
//!   after them and win. An MSR KVM cannot read, or a value it refuses, is an error.
//! - The KVM capability changes are checked when `/dev/kvm` is opened
//!   ([`crate::kvm::KvmContext::with_capabilities`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use api::cpu_template::{CpuidRegister, MsrModifier};
use api::{CpuTemplate, CustomCpuTemplate, StaticCpuTemplate};
use kvm_bindings::{Msrs, kvm_cpuid_entry2, kvm_msr_entry};
use kvm_ioctls::VcpuFd;

use super::cpuid::{self, Vendor};
use super::static_templates::{self, HOST_MODEL_BITS};

/// MSRs per KVM_GET_MSRS / KVM_SET_MSRS call.
const MSR_BATCH: usize = 64;

/// Why a template cannot be applied on this host.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A static template of the other vendor.
    #[error(
        "CPU template {template} is for {wanted} CPUs; this host's CPU is {host}, and \
         Firecracker does not present one vendor as the other"
    )]
    WrongVendor {
        /// The template.
        template: StaticCpuTemplate,
        /// Its vendor.
        wanted: &'static str,
        /// The host's vendor string.
        host: String,
    },
    /// A static template on a CPU model it was not made for.
    #[error(
        "CPU template {template} is for {models}; this host's CPU (family {family:#x}, \
         model {model:#x}, stepping {stepping}) is none of them, where Firecracker refuses \
         it too: use a custom template (PUT /cpu-config)"
    )]
    WrongModel {
        /// The template.
        template: StaticCpuTemplate,
        /// The models it may be used on.
        models: String,
        /// The host's family, model and stepping (extended fields included).
        family: u32,
        /// Model.
        model: u32,
        /// Stepping.
        stepping: u32,
    },
    /// A CPUID modifier of a leaf KVM does not report.
    #[error(
        "the CPU template changes CPUID leaf {leaf:#x} subleaf {subleaf:#x}, which this \
         host's KVM does not offer"
    )]
    CpuidNotOffered {
        /// Leaf.
        leaf: u32,
        /// Subleaf.
        subleaf: u32,
    },
    /// An MSR modifier of an MSR KVM cannot read for this vCPU.
    #[error(
        "the CPU template changes MSR {0:#x}, which this host's KVM does not offer (with \
         this CPUID)"
    )]
    MsrNotOffered(u32),
    /// KVM refused the value a modifier gave an MSR.
    #[error("KVM refused {value:#x} for MSR {addr:#x}, the value the CPU template gives it")]
    MsrRefused {
        /// The MSR.
        addr: u32,
        /// The value.
        value: u64,
    },
    /// A KVM call failed.
    #[error("{what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The vendor string of leaf 0 (e.g. `GenuineIntel`).
fn vendor_string(entries: &[kvm_cpuid_entry2]) -> String {
    match entries.iter().find(|e| e.function == 0) {
        Some(e) => [e.ebx, e.edx, e.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .map(char::from)
            .collect(),
        None => "unknown (no CPUID leaf 0)".into(),
    }
}

/// The custom template `template` amounts to on the host whose KVM offers `supported`:
/// a static one only on a host of its vendor and one of its CPU models.
pub fn resolve<'a>(
    template: &'a CpuTemplate,
    supported: &[kvm_cpuid_entry2],
) -> Result<Cow<'a, CustomCpuTemplate>, TemplateError> {
    let t = match template {
        CpuTemplate::Custom(custom) => return Ok(Cow::Borrowed(custom)),
        CpuTemplate::Static(t) => *t,
    };
    let (vendor, models) = static_templates::supported_hosts(t);
    if cpuid::vendor(supported) != vendor {
        return Err(TemplateError::WrongVendor {
            template: t,
            wanted: match vendor {
                Vendor::Intel => "Intel",
                _ => "AMD",
            },
            host: vendor_string(supported),
        });
    }
    let eax = supported
        .iter()
        .find(|e| e.function == 1 && e.index == 0)
        .map_or(0, |e| e.eax);
    if !models.iter().any(|m| m.signature == eax & HOST_MODEL_BITS) {
        let names: Vec<&str> = models.iter().map(|m| m.name).collect();
        let (base_family, ext_family) = ((eax >> 8) & 0xf, (eax >> 20) & 0xff);
        let base_model = (eax >> 4) & 0xf;
        let ext_model = (eax >> 16) & 0xf;
        let family = if base_family == 0xf {
            base_family + ext_family
        } else {
            base_family
        };
        let model = if base_family == 6 || base_family == 0xf {
            (ext_model << 4) | base_model
        } else {
            base_model
        };
        return Err(TemplateError::WrongModel {
            template: t,
            models: names.join(", "),
            family,
            model,
            stepping: eax & 0xf,
        });
    }
    Ok(Cow::Owned(static_templates::custom(t)))
}

/// Apply `template`'s CPUID modifiers, in order, to `entries` (KVM's supported CPUID):
/// each modifier's flags replace the entry's, each register gets its bitmap.
pub fn apply_cpuid(
    entries: &mut [kvm_cpuid_entry2],
    template: &CustomCpuTemplate,
) -> Result<(), TemplateError> {
    for leaf in &template.cpuid_modifiers {
        let entry = entries
            .iter_mut()
            .find(|e| e.function == leaf.leaf && e.index == leaf.subleaf)
            .ok_or(TemplateError::CpuidNotOffered {
                leaf: leaf.leaf,
                subleaf: leaf.subleaf,
            })?;
        entry.flags = leaf.flags;
        for m in &leaf.modifiers {
            let reg = match m.register {
                CpuidRegister::Eax => &mut entry.eax,
                CpuidRegister::Ebx => &mut entry.ebx,
                CpuidRegister::Ecx => &mut entry.ecx,
                CpuidRegister::Edx => &mut entry.edx,
            };
            // A 32-bit bitmap only has bits 0..32.
            *reg = m.bitmap.apply(u64::from(*reg)) as u32;
        }
    }
    Ok(())
}

/// The MSR values `modifiers` give, from the values KVM gave (`host`, by address): the
/// modifiers apply in order, so a later one sees an earlier one's result.
pub fn apply_msrs(
    host: &BTreeMap<u32, u64>,
    modifiers: &[MsrModifier],
) -> Result<Vec<kvm_msr_entry>, TemplateError> {
    let mut values = BTreeMap::new();
    for m in modifiers {
        let current = match values.get(&m.addr) {
            Some(v) => *v,
            None => *host
                .get(&m.addr)
                .ok_or(TemplateError::MsrNotOffered(m.addr))?,
        };
        values.insert(m.addr, m.bitmap.apply(current));
    }
    Ok(values
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect())
}

/// The MSR addresses `template` changes (so that snapshots keep them).
pub fn msr_addresses(template: &CpuTemplate) -> Vec<u32> {
    match template {
        CpuTemplate::Custom(t) => t.msr_modifiers.iter().map(|m| m.addr).collect(),
        CpuTemplate::Static(t) => static_templates::custom(*t)
            .msr_modifiers
            .iter()
            .map(|m| m.addr)
            .collect(),
    }
}

fn msr_list(entries: &[kvm_msr_entry]) -> Result<Msrs, TemplateError> {
    Msrs::from_entries(entries).map_err(|_| TemplateError::Kvm {
        what: "MSR list",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })
}

/// Read the MSRs `modifiers` name from the vCPU (which has its CPUID), apply them and
/// write the results.
pub fn set_msrs(fd: &VcpuFd, modifiers: &[MsrModifier]) -> Result<(), TemplateError> {
    let mut addrs: Vec<u32> = modifiers.iter().map(|m| m.addr).collect();
    addrs.sort_unstable();
    addrs.dedup();
    let mut host = BTreeMap::new();
    for batch in addrs.chunks(MSR_BATCH) {
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = msr_list(&entries)?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(|source| TemplateError::Kvm {
                what: "cannot read the CPU template's MSRs",
                source,
            })?;
        // KVM reads in order and stops at the first MSR it does not have.
        if let Some(missing) = batch.get(read) {
            return Err(TemplateError::MsrNotOffered(*missing));
        }
        host.extend(msrs.as_slice().iter().map(|e| (e.index, e.data)));
    }
    let values = apply_msrs(&host, modifiers)?;
    for batch in values.chunks(MSR_BATCH) {
        let written = fd
            .set_msrs(&msr_list(batch)?)
            .map_err(|source| TemplateError::Kvm {
                what: "cannot write the CPU template's MSRs",
                source,
            })?;
        if let Some(refused) = batch.get(written) {
            return Err(TemplateError::MsrRefused {
                addr: refused.index,
                value: refused.data,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::cpu_template::{Bitmap32, CpuidLeafModifier, CpuidRegisterModifier};

    fn entry(function: u32, index: u32, flags: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    const INTEL: [u32; 3] = [0x756e_6547, 0x6c65_746e, 0x4965_6e69]; // ebx, ecx, edx
    const AMD: [u32; 3] = [0x6874_7541, 0x444d_4163, 0x6974_6e65];

    fn host(vendor: [u32; 3], leaf1_eax: u32) -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, 0, [0xd, vendor[0], vendor[1], vendor[2]]),
            entry(1, 0, 0, [leaf1_eax, 0x0001_0800, 0xfffa_3203, 0x178b_fbff]),
            entry(7, 0, 1, [0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff]),
            entry(7, 1, 1, [0x10, 0, 0, 0]),
            entry(0xd, 0, 1, [0x2e7, 0x340, 0xa88, 0]),
            entry(0xd, 1, 1, [0xf, 0, 0, 0]),
            entry(0x8000_0001, 0, 0, [0, 0, 0x2000_0121, 0x2c10_0800]),
            entry(0x8000_0008, 0, 0, [0x3030, 0x0000_0200, 0, 0]),
        ]
    }

    fn leaf(
        leaf: u32,
        subleaf: u32,
        flags: u32,
        mods: &[(CpuidRegister, &str)],
    ) -> CpuidLeafModifier {
        CpuidLeafModifier {
            leaf,
            subleaf,
            flags,
            modifiers: mods
                .iter()
                .map(|(register, bitmap)| CpuidRegisterModifier {
                    register: *register,
                    bitmap: bitmap.parse::<Bitmap32>().unwrap(),
                })
                .collect(),
        }
    }

    fn get(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn cpuid_modifiers_keep_x_bits_and_force_the_others() {
        let mut entries = host(INTEL, 0x0005_0657);
        let before = entries.clone();
        let template = CustomCpuTemplate {
            cpuid_modifiers: vec![
                // Leaf 1 ECX: bit 0 cleared, bit 3 set, bit 31..4 and 2..1 kept.
                leaf(1, 0, 0, &[(CpuidRegister::Ecx, "0b1x0")]),
                // Leaf 7.0 EBX bit 5 (AVX2) cleared; EDX all set then bit 1 cleared.
                leaf(
                    7,
                    0,
                    1,
                    &[
                        (CpuidRegister::Ebx, "0b0xxxxx"),
                        (CpuidRegister::Edx, &format!("0b{}", "1".repeat(32))),
                        (CpuidRegister::Edx, "0b0x"),
                    ],
                ),
                // Flags are the template's.
                leaf(0x8000_0008, 0, 0, &[(CpuidRegister::Eax, "0b")]),
            ],
            ..Default::default()
        };
        apply_cpuid(&mut entries, &template).unwrap();
        let l1 = get(&entries, 1, 0);
        assert_eq!(l1.ecx, (before[1].ecx & !0b101) | 0b100);
        assert_eq!(
            (l1.eax, l1.ebx, l1.edx),
            (before[1].eax, before[1].ebx, before[1].edx)
        );
        let l7 = get(&entries, 7, 0);
        assert_eq!(l7.ebx, 0xffff_ffdf);
        assert_eq!(l7.edx, 0xffff_fffd);
        assert_eq!(l7.flags, 1);
        // Subleaf 1 of leaf 7 is another entry: untouched.
        assert_eq!(get(&entries, 7, 1), before[3]);
        assert_eq!(get(&entries, 0x8000_0008, 0), before[7]);
    }

    #[test]
    fn a_leaf_kvm_does_not_offer_is_refused_by_number() {
        let mut entries = host(INTEL, 0x0005_0657);
        let template = CustomCpuTemplate {
            cpuid_modifiers: vec![leaf(7, 2, 1, &[(CpuidRegister::Eax, "0b1")])],
            ..Default::default()
        };
        let err = apply_cpuid(&mut entries, &template).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the CPU template changes CPUID leaf 0x7 subleaf 0x2, which this host's KVM does \
             not offer"
        );
    }

    #[test]
    fn msr_modifiers_apply_in_order_to_what_kvm_gave() {
        let host = BTreeMap::from([(0x277, 0x0007_0406_0007_0406u64), (0x10a, 0xff)]);
        let m = |addr, bitmap: &str| MsrModifier {
            addr,
            bitmap: bitmap.parse().unwrap(),
        };
        let values = apply_msrs(
            &host,
            &[
                m(0x277, "0b0000_0001"),
                m(0x10a, "0b0x"),
                m(0x10a, "0b1xxxxxxxx"),
            ],
        )
        .unwrap();
        let got: Vec<(u32, u64)> = values.iter().map(|e| (e.index, e.data)).collect();
        assert_eq!(got, [(0x10a, 0x1fd), (0x277, 0x0007_0406_0007_0401)]);
        let err = apply_msrs(&host, &[m(0x48, "0b1")]).unwrap_err();
        assert!(err.to_string().contains("MSR 0x48"), "{err}");
    }

    #[test]
    fn static_templates_check_vendor_then_model() {
        let cascade_lake = host(INTEL, 0x0005_0657);
        let milan = host(AMD, 0x00a0_0f11);
        for t in [
            StaticCpuTemplate::T2,
            StaticCpuTemplate::T2CL,
            StaticCpuTemplate::C3,
        ] {
            let template = CpuTemplate::Static(t);
            let resolved = resolve(&template, &cascade_lake).unwrap();
            assert_eq!(*resolved, static_templates::custom(t));
            let err = resolve(&template, &milan).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!(
                    "CPU template {t} is for Intel CPUs; this host's CPU is AuthenticAMD"
                )),
                "{err}"
            );
        }
        let t2a = CpuTemplate::Static(StaticCpuTemplate::T2A);
        assert!(resolve(&t2a, &milan).is_ok());
        let err = resolve(&t2a, &cascade_lake).unwrap_err().to_string();
        assert!(
            err.contains("is for AMD CPUs; this host's CPU is GenuineIntel"),
            "{err}"
        );
        // An Intel CPU of another model (Sapphire Rapids-like: family 6, model 0x8f).
        let other = host(INTEL, 0x0008_06f8);
        let err = resolve(&CpuTemplate::Static(StaticCpuTemplate::T2S), &other)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "CPU template T2S is for Skylake, Cascade Lake; this host's CPU (family 0x6, \
                 model 0x8f, stepping 8) is none of them"
            ),
            "{err}"
        );
        // A Zen 4 is not a Milan.
        let zen4 = host(AMD, 0x00a1_0f11);
        let err = resolve(&t2a, &zen4).unwrap_err().to_string();
        assert!(
            err.contains("(family 0x19, model 0x11, stepping 1)"),
            "{err}"
        );
        // The processor-type bits do not matter.
        assert!(
            resolve(
                &CpuTemplate::Static(StaticCpuTemplate::T2),
                &host(INTEL, 0x0005_1657)
            )
            .is_ok()
        );
    }

    #[test]
    fn every_static_template_applies_to_a_host_of_its_kind() {
        for t in StaticCpuTemplate::ALL {
            let mut entries = match t {
                StaticCpuTemplate::T2A => host(AMD, 0x00a0_0f11),
                _ => host(INTEL, 0x0005_0657),
            };
            let template = CpuTemplate::Static(t);
            let custom = resolve(&template, &entries).unwrap().into_owned();
            apply_cpuid(&mut entries, &custom).unwrap();
            let l1 = get(&entries, 1, 0);
            assert_eq!(
                l1.eax & 0x0fff_0fff,
                if t == StaticCpuTemplate::C3 {
                    0x306e4
                } else {
                    0x306f2
                }
            );
            // AVX-512F hidden, ERMS shown by the T2 family.
            let l7 = get(&entries, 7, 0);
            assert_eq!(l7.ebx & (1 << 16), 0, "{t}");
            assert!(l7.ebx & (1 << 9) != 0, "{t}");
            assert_eq!(
                msr_addresses(&template),
                if matches!(t, StaticCpuTemplate::T2S | StaticCpuTemplate::T2CL) {
                    vec![0x10a]
                } else {
                    vec![]
                }
            );
        }
    }

    #[test]
    fn custom_templates_pass_as_they_are() {
        let custom = CustomCpuTemplate {
            cpuid_modifiers: vec![leaf(1, 0, 0, &[(CpuidRegister::Eax, "0b1")])],
            ..Default::default()
        };
        let template = CpuTemplate::Custom(custom.clone());
        // No vendor check for custom templates.
        assert_eq!(*resolve(&template, &host(AMD, 0)).unwrap(), custom);
        assert!(msr_addresses(&template).is_empty());
    }
}
