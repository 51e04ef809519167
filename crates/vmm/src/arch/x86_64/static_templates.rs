//! Firecracker's static CPU templates (C3, T2, T2S, T2CL, T2A), each written as what it
//! does to the guest's CPUID and MSRs, and the host CPUs it may be used on.
//!
//! All of them present the guest a fixed family/model/stepping and hide the features a
//! fleet of older or other CPUs lacks: the Intel-only monitoring and virtualisation bits
//! of leaf 1, AVX-512, TSX, SGX, MPX, Processor Trace and the newer instructions of leaf
//! 7, the XSAVE state components and variants that go with them, 1 GiB pages. C3 also
//! hides AVX2, BMI1/2, FMA, MOVBE and LZCNT (an Ivy Bridge). T2S and T2CL fix or filter
//! the vulnerability bits of IA32_ARCH_CAPABILITIES; T2CL and T2A hide the extended-leaf
//! bits on which Intel and AMD differ, so the two form one fleet.

use api::cpu_template::{
    BitFilter, CpuidLeafModifier, CpuidRegister, CpuidRegisterModifier,
    KVM_CPUID_FLAG_SIGNIFICANT_INDEX, MsrModifier,
};
use api::{CustomCpuTemplate, StaticCpuTemplate};

use super::cpuid::Vendor;

/// CPUID 1 EAX: stepping, model, family, processor type, extended model and family.
const VERSION_BITS: u32 = 0x0fff_3fff;
/// CPUID 1 EAX of an Intel Haswell-EP (family 6, model 0x3f, stepping 2): T2's CPU.
const HASWELL_EP: u32 = 0x0003_06f2;
/// CPUID 1 EAX of an Intel Ivy Bridge-EP (family 6, model 0x3e, stepping 4): C3's CPU.
const IVY_BRIDGE_EP: u32 = 0x0003_06e4;

/// Leaf 1 ECX.
mod l1_ecx {
    pub const DTES64: u32 = 1 << 2;
    pub const MONITOR: u32 = 1 << 3;
    pub const DS_CPL: u32 = 1 << 4;
    pub const VMX: u32 = 1 << 5;
    pub const SMX: u32 = 1 << 6;
    pub const EIST: u32 = 1 << 7;
    pub const TM2: u32 = 1 << 8;
    pub const CNXT_ID: u32 = 1 << 10;
    pub const SDBG: u32 = 1 << 11;
    pub const FMA: u32 = 1 << 12;
    pub const XTPR: u32 = 1 << 14;
    pub const PDCM: u32 = 1 << 15;
    pub const DCA: u32 = 1 << 18;
    pub const MOVBE: u32 = 1 << 22;
}

/// Leaf 1 EDX.
mod l1_edx {
    pub const MCE: u32 = 1 << 7;
    pub const MTRR: u32 = 1 << 12;
    pub const PSN: u32 = 1 << 18;
    pub const DS: u32 = 1 << 21;
    pub const ACPI: u32 = 1 << 22;
    pub const SS: u32 = 1 << 27;
    pub const TM: u32 = 1 << 29;
    pub const IA64: u32 = 1 << 30;
    pub const PBE: u32 = 1 << 31;
}

/// Leaf 7 subleaf 0 EBX.
mod l7_ebx {
    pub const SGX: u32 = 1 << 2;
    pub const BMI1: u32 = 1 << 3;
    pub const HLE: u32 = 1 << 4;
    pub const AVX2: u32 = 1 << 5;
    pub const BMI2: u32 = 1 << 8;
    pub const ERMS: u32 = 1 << 9;
    pub const INVPCID: u32 = 1 << 10;
    pub const RTM: u32 = 1 << 11;
    pub const RDT_M: u32 = 1 << 12;
    pub const MPX: u32 = 1 << 14;
    pub const RDT_A: u32 = 1 << 15;
    pub const AVX512F: u32 = 1 << 16;
    pub const AVX512DQ: u32 = 1 << 17;
    pub const RDSEED: u32 = 1 << 18;
    pub const ADX: u32 = 1 << 19;
    pub const AVX512_IFMA: u32 = 1 << 21;
    /// PCOMMIT on old Intel documents (withdrawn), RDPID on AMD's.
    pub const BIT22: u32 = 1 << 22;
    pub const CLFLUSHOPT: u32 = 1 << 23;
    pub const CLWB: u32 = 1 << 24;
    pub const INTEL_PT: u32 = 1 << 25;
    pub const AVX512PF: u32 = 1 << 26;
    pub const AVX512ER: u32 = 1 << 27;
    pub const AVX512CD: u32 = 1 << 28;
    pub const SHA: u32 = 1 << 29;
    pub const AVX512BW: u32 = 1 << 30;
    pub const AVX512VL: u32 = 1 << 31;
}

/// Leaf 7 subleaf 0 ECX.
mod l7_ecx {
    pub const AVX512_VBMI: u32 = 1 << 1;
    pub const UMIP: u32 = 1 << 2;
    pub const PKU: u32 = 1 << 3;
    pub const OSPKE: u32 = 1 << 4;
    pub const AVX512_VBMI2: u32 = 1 << 6;
    pub const GFNI: u32 = 1 << 8;
    pub const VAES: u32 = 1 << 9;
    pub const VPCLMULQDQ: u32 = 1 << 10;
    pub const AVX512_VNNI: u32 = 1 << 11;
    pub const AVX512_BITALG: u32 = 1 << 12;
    pub const AVX512_VPOPCNTDQ: u32 = 1 << 14;
    pub const LA57: u32 = 1 << 16;
    pub const RDPID: u32 = 1 << 22;
    pub const SGX_LC: u32 = 1 << 30;
}

/// Leaf 7 subleaf 0 EDX.
mod l7_edx {
    pub const AVX512_4VNNIW: u32 = 1 << 2;
    pub const AVX512_4FMAPS: u32 = 1 << 3;
    pub const FSRM: u32 = 1 << 4;
    pub const AVX512_VP2INTERSECT: u32 = 1 << 8;
}

/// Leaf 0xd: XSAVE state components (subleaf 0 EAX) and variants (subleaf 1 EAX).
mod l0xd {
    pub const MPX_STATE: u32 = 0b11 << 3;
    pub const AVX512_STATE: u32 = 0b111 << 5;
    pub const PKRU_STATE: u32 = 1 << 9;
    pub const XSAVEC: u32 = 1 << 1;
    pub const XGETBV_ECX1: u32 = 1 << 2;
    pub const XSAVES: u32 = 1 << 3;
}

/// Leaf 0x8000_0001 ECX.
mod ext1_ecx {
    pub const SVM: u32 = 1 << 2;
    pub const LZCNT: u32 = 1 << 5;
    pub const SSE4A: u32 = 1 << 6;
    pub const MISALIGN_SSE: u32 = 1 << 7;
    pub const PREFETCHW: u32 = 1 << 8;
    pub const MWAITX: u32 = 1 << 29;
}

/// Leaf 0x8000_0001 EDX.
mod ext1_edx {
    pub const MMXEXT: u32 = 1 << 22;
    pub const MMX: u32 = 1 << 23;
    pub const FXSR: u32 = 1 << 24;
    pub const FFXSR: u32 = 1 << 25;
    pub const PAGE_1GB: u32 = 1 << 26;
}

/// Leaf 0x8000_0008 EBX.
mod ext8_ebx {
    pub const CLZERO: u32 = 1 << 0;
    pub const RSTR_FP_ERR_PTRS: u32 = 1 << 2;
    pub const WBNOINVD: u32 = 1 << 9;
    pub const IBRS_PREFERRED: u32 = 1 << 18;
    pub const IBRS_SAME_MODE: u32 = 1 << 19;
    pub const EFER_LMSLE_UNSUPPORTED: u32 = 1 << 20;
}

/// IA32_ARCH_CAPABILITIES.
const MSR_ARCH_CAPABILITIES: u32 = 0x10a;

/// IA32_ARCH_CAPABILITIES bits.
mod arch_cap {
    pub const RSBA: u64 = 1 << 2;
    pub const SKIP_L1DFL_VMENTRY: u64 = 1 << 3;
    pub const IF_PSCHANGE_MC_NO: u64 = 1 << 6;
    pub const MCU_CONTROL: u64 = 1 << 9;
    pub const MISC_PACKAGE_CTLS: u64 = 1 << 10;
    pub const ENERGY_FILTERING_CTL: u64 = 1 << 11;
    pub const DOITM: u64 = 1 << 12;
    pub const BIT16: u64 = 1 << 16;
    pub const FB_CLEAR: u64 = 1 << 17;
    pub const FB_CLEAR_CTRL: u64 = 1 << 18;
    pub const RRSBA: u64 = 1 << 19;
    pub const BHI_NO: u64 = 1 << 20;
    pub const XAPIC_DISABLE_STATUS: u64 = 1 << 21;
    pub const BIT22: u64 = 1 << 22;
    pub const OVERCLOCKING_STATUS: u64 = 1 << 23;
    pub const GDS_CTRL: u64 = 1 << 25;
    pub const GDS_NO: u64 = 1 << 26;
    pub const RFDS_NO: u64 = 1 << 27;
    /// Bits 29 to 63.
    pub const HIGH: u64 = !0 << 29;
}

/// One change to one CPUID register: clear `clear`, then set `set`.
struct Change(u32, u32, CpuidRegister, u32, u32);

fn clear(leaf: u32, subleaf: u32, reg: CpuidRegister, bits: u32) -> Change {
    Change(leaf, subleaf, reg, bits, 0)
}

use CpuidRegister::{Eax, Ebx, Ecx, Edx};

/// What T2, T2S, T2CL and T2A share: a Haswell's leaf 1 and leaf 7, XSAVE without
/// AVX-512, MPX or PKRU state and without the compacted or supervisor forms.
fn t2_base(ext1_ecx: u32, ext1_edx: u32) -> Vec<Change> {
    use {l1_ecx as c, l1_edx as d, l7_ebx as b7, l7_ecx as c7, l7_edx as d7};
    vec![
        Change(1, 0, Eax, VERSION_BITS, HASWELL_EP),
        clear(
            1,
            0,
            Ecx,
            c::DTES64
                | c::MONITOR
                | c::DS_CPL
                | c::VMX
                | c::SMX
                | c::EIST
                | c::TM2
                | c::CNXT_ID
                | c::SDBG
                | c::XTPR
                | c::PDCM
                | c::DCA,
        ),
        Change(
            1,
            0,
            Edx,
            d::PSN | d::DS | d::ACPI | d::SS | d::TM | d::IA64 | d::PBE,
            d::MCE | d::MTRR,
        ),
        Change(
            7,
            0,
            Ebx,
            b7::SGX
                | b7::HLE
                | b7::RTM
                | b7::RDT_M
                | b7::MPX
                | b7::RDT_A
                | b7::AVX512F
                | b7::AVX512DQ
                | b7::RDSEED
                | b7::ADX
                | b7::AVX512_IFMA
                | b7::BIT22
                | b7::CLFLUSHOPT
                | b7::CLWB
                | b7::INTEL_PT
                | b7::AVX512PF
                | b7::AVX512ER
                | b7::AVX512CD
                | b7::SHA
                | b7::AVX512BW
                | b7::AVX512VL,
            b7::ERMS,
        ),
        clear(
            7,
            0,
            Ecx,
            c7::AVX512_VBMI
                | c7::UMIP
                | c7::PKU
                | c7::OSPKE
                | c7::AVX512_VBMI2
                | c7::GFNI
                | c7::VAES
                | c7::VPCLMULQDQ
                | c7::AVX512_VNNI
                | c7::AVX512_BITALG
                | c7::AVX512_VPOPCNTDQ
                | c7::LA57
                | c7::RDPID
                | c7::SGX_LC,
        ),
        clear(
            7,
            0,
            Edx,
            d7::AVX512_4VNNIW | d7::AVX512_4FMAPS | d7::FSRM | d7::AVX512_VP2INTERSECT,
        ),
        clear(
            0xd,
            0,
            Eax,
            l0xd::MPX_STATE | l0xd::AVX512_STATE | l0xd::PKRU_STATE,
        ),
        clear(0xd, 1, Eax, l0xd::XSAVEC | l0xd::XGETBV_ECX1 | l0xd::XSAVES),
        clear(0x8000_0001, 0, Ecx, ext1_ecx),
        clear(0x8000_0001, 0, Edx, ext1_edx),
    ]
}

/// C3: an Ivy Bridge, without AVX2, BMI, FMA, MOVBE, LZCNT and what T2 hides.
fn c3() -> Vec<Change> {
    use {l1_ecx as c, l1_edx as d, l7_ebx as b7, l7_ecx as c7, l7_edx as d7};
    vec![
        Change(1, 0, Eax, VERSION_BITS, IVY_BRIDGE_EP),
        clear(
            1,
            0,
            Ecx,
            c::DTES64
                | c::MONITOR
                | c::DS_CPL
                | c::VMX
                | c::TM2
                | c::CNXT_ID
                | c::SDBG
                | c::FMA
                | c::XTPR
                | c::PDCM
                | c::MOVBE,
        ),
        Change(
            1,
            0,
            Edx,
            d::PSN | d::DS | d::ACPI | d::SS | d::TM | d::PBE,
            d::MCE | d::MTRR,
        ),
        clear(
            7,
            0,
            Ebx,
            b7::SGX
                | b7::BMI1
                | b7::HLE
                | b7::AVX2
                | b7::BMI2
                | b7::INVPCID
                | b7::RTM
                | b7::RDT_M
                | b7::MPX
                | b7::RDT_A
                | b7::AVX512F
                | b7::AVX512DQ
                | b7::RDSEED
                | b7::ADX
                | b7::AVX512_IFMA
                | b7::CLFLUSHOPT
                | b7::CLWB
                | b7::INTEL_PT
                | b7::AVX512PF
                | b7::AVX512ER
                | b7::AVX512CD
                | b7::SHA
                | b7::AVX512BW
                | b7::AVX512VL,
        ),
        clear(
            7,
            0,
            Ecx,
            c7::AVX512_VBMI
                | c7::UMIP
                | c7::PKU
                | c7::OSPKE
                | c7::AVX512_VNNI
                | c7::AVX512_VPOPCNTDQ
                | c7::LA57
                | c7::RDPID
                | c7::SGX_LC,
        ),
        clear(7, 0, Edx, d7::AVX512_4VNNIW | d7::AVX512_4FMAPS),
        clear(
            0xd,
            0,
            Eax,
            l0xd::MPX_STATE | l0xd::AVX512_STATE | l0xd::PKRU_STATE,
        ),
        clear(0xd, 1, Eax, l0xd::XSAVEC | l0xd::XGETBV_ECX1 | l0xd::XSAVES),
        clear(0x8000_0001, 0, Ecx, ext1_ecx::LZCNT | ext1_ecx::PREFETCHW),
        clear(0x8000_0001, 0, Edx, ext1_edx::PAGE_1GB),
    ]
}

/// The CPUID changes and MSR changes of `template`.
fn changes(template: StaticCpuTemplate) -> (Vec<Change>, Vec<MsrModifier>) {
    use {ext1_ecx as e1c, ext1_edx as e1d};
    let wbnoinvd = clear(0x8000_0008, 0, Ebx, ext8_ebx::WBNOINVD);
    let t2_ext = (e1c::PREFETCHW | e1c::MWAITX, e1d::PAGE_1GB);
    match template {
        StaticCpuTemplate::C3 => (c3(), Vec::new()),
        StaticCpuTemplate::T2 => {
            let mut c = t2_base(t2_ext.0, t2_ext.1);
            c.push(wbnoinvd);
            (c, Vec::new())
        }
        StaticCpuTemplate::T2S => {
            let mut c = t2_base(t2_ext.0, t2_ext.1);
            c.push(wbnoinvd);
            // Every bit fixed: what Skylake and Cascade Lake both can promise.
            use arch_cap as a;
            let value = a::RSBA
                | a::SKIP_L1DFL_VMENTRY
                | a::IF_PSCHANGE_MC_NO
                | a::MISC_PACKAGE_CTLS
                | a::ENERGY_FILTERING_CTL
                | a::FB_CLEAR
                | a::RRSBA
                | a::GDS_NO
                | a::RFDS_NO;
            let msr = MsrModifier {
                addr: MSR_ARCH_CAPABILITIES,
                bitmap: BitFilter::clear_then_set(!0, value),
            };
            (c, vec![msr])
        }
        StaticCpuTemplate::T2CL => {
            let mut c = t2_base(
                t2_ext.0 | e1c::SSE4A | e1c::MISALIGN_SSE,
                t2_ext.1 | e1d::MMXEXT | e1d::MMX | e1d::FXSR | e1d::FFXSR,
            );
            c.push(wbnoinvd);
            // The host's "not vulnerable" bits pass; the controls and the rest are hidden.
            use arch_cap as a;
            let hidden = a::MCU_CONTROL
                | a::MISC_PACKAGE_CTLS
                | a::ENERGY_FILTERING_CTL
                | a::DOITM
                | a::BIT16
                | a::FB_CLEAR_CTRL
                | a::BHI_NO
                | a::XAPIC_DISABLE_STATUS
                | a::BIT22
                | a::OVERCLOCKING_STATUS
                | a::GDS_CTRL
                | a::HIGH;
            let msr = MsrModifier {
                addr: MSR_ARCH_CAPABILITIES,
                bitmap: BitFilter::clear_then_set(hidden, 0),
            };
            (c, vec![msr])
        }
        StaticCpuTemplate::T2A => {
            let mut c = t2_base(
                t2_ext.0 | e1c::SVM | e1c::SSE4A | e1c::MISALIGN_SSE,
                e1d::PAGE_1GB | e1d::MMXEXT | e1d::FFXSR,
            );
            use ext8_ebx as b;
            c.push(Change(
                0x8000_0008,
                0,
                Ebx,
                b::CLZERO | b::WBNOINVD,
                b::RSTR_FP_ERR_PTRS
                    | b::IBRS_PREFERRED
                    | b::IBRS_SAME_MODE
                    | b::EFER_LMSLE_UNSUPPORTED,
            ));
            (c, Vec::new())
        }
    }
}

/// `template` as a custom template: one CPUID modifier per change.
pub fn custom(template: StaticCpuTemplate) -> CustomCpuTemplate {
    let (cpuid, msrs) = changes(template);
    CustomCpuTemplate {
        cpuid_modifiers: cpuid
            .into_iter()
            .map(
                |Change(leaf, subleaf, register, clear, set)| CpuidLeafModifier {
                    leaf,
                    subleaf,
                    // Leaves 7 and 0xd have subleaves.
                    flags: if leaf == 7 || leaf == 0xd {
                        KVM_CPUID_FLAG_SIGNIFICANT_INDEX
                    } else {
                        0
                    },
                    modifiers: vec![CpuidRegisterModifier {
                        register,
                        bitmap: BitFilter::clear_then_set(u64::from(clear), u64::from(set)),
                    }],
                },
            )
            .collect(),
        msr_modifiers: msrs,
        ..CustomCpuTemplate::default()
    }
}

/// A host CPU a static template may be used on: its CPUID 1 EAX without the processor
/// type (extended family and model, family, model, stepping).
#[derive(Debug, Clone, Copy)]
pub struct HostModel {
    /// Its name.
    pub name: &'static str,
    /// CPUID 1 EAX & [`HOST_MODEL_BITS`].
    pub signature: u32,
}

/// The bits of CPUID 1 EAX compared with [`HostModel::signature`].
pub const HOST_MODEL_BITS: u32 = 0x0fff_0fff;

const SKYLAKE: HostModel = HostModel {
    name: "Skylake",
    signature: 0x0005_0654,
};
const CASCADE_LAKE: HostModel = HostModel {
    name: "Cascade Lake",
    signature: 0x0005_0657,
};
const ICE_LAKE: HostModel = HostModel {
    name: "Ice Lake",
    signature: 0x0006_06a6,
};
const MILAN: HostModel = HostModel {
    name: "Milan",
    signature: 0x00a0_0f11,
};

/// The vendor and CPU models `template` may be used on (Firecracker's lists).
pub fn supported_hosts(template: StaticCpuTemplate) -> (Vendor, &'static [HostModel]) {
    match template {
        StaticCpuTemplate::C3 | StaticCpuTemplate::T2 => {
            (Vendor::Intel, &[SKYLAKE, CASCADE_LAKE, ICE_LAKE])
        }
        StaticCpuTemplate::T2S => (Vendor::Intel, &[SKYLAKE, CASCADE_LAKE]),
        StaticCpuTemplate::T2CL => (Vendor::Intel, &[CASCADE_LAKE, ICE_LAKE]),
        StaticCpuTemplate::T2A => (Vendor::Amd, &[MILAN]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(t: &CustomCpuTemplate, leaf: u32, subleaf: u32, reg: CpuidRegister) -> (u32, u32) {
        let mut mask = 0;
        let mut value = 0;
        for m in t
            .cpuid_modifiers
            .iter()
            .filter(|m| m.leaf == leaf && m.subleaf == subleaf)
        {
            for r in m.modifiers.iter().filter(|r| r.register == reg) {
                mask |= r.bitmap.mask as u32;
                value = (value & !(r.bitmap.mask as u32)) | r.bitmap.value as u32;
            }
        }
        (mask, value)
    }

    #[test]
    fn every_template_presents_its_cpu_and_hides_avx512() {
        for t in StaticCpuTemplate::ALL {
            let c = custom(t);
            let (mask, value) = filter(&c, 1, 0, Eax);
            assert_eq!(mask, VERSION_BITS, "{t}");
            let expected = if t == StaticCpuTemplate::C3 {
                IVY_BRIDGE_EP
            } else {
                HASWELL_EP
            };
            assert_eq!(value, expected, "{t}");
            let (mask, value) = filter(&c, 7, 0, Ebx);
            assert_eq!(mask & l7_ebx::AVX512F, l7_ebx::AVX512F, "{t} hides AVX-512");
            assert_eq!(value & l7_ebx::AVX512F, 0);
            // MCE and MTRR are always shown.
            let (mask, value) = filter(&c, 1, 0, Edx);
            assert_eq!(mask & value, l1_edx::MCE | l1_edx::MTRR, "{t}");
            // Indexed leaves keep KVM's "significant index" flag.
            for m in &c.cpuid_modifiers {
                let indexed = m.leaf == 7 || m.leaf == 0xd;
                assert_eq!(m.flags == KVM_CPUID_FLAG_SIGNIFICANT_INDEX, indexed, "{t}");
            }
        }
    }

    #[test]
    fn only_c3_hides_avx2_and_only_t2_family_keeps_fma() {
        for t in StaticCpuTemplate::ALL {
            let c = custom(t);
            let (mask, _) = filter(&c, 7, 0, Ebx);
            assert_eq!(mask & l7_ebx::AVX2 != 0, t == StaticCpuTemplate::C3, "{t}");
            let (mask, _) = filter(&c, 1, 0, Ecx);
            assert_eq!(mask & l1_ecx::FMA != 0, t == StaticCpuTemplate::C3, "{t}");
        }
    }

    #[test]
    fn arch_capabilities_of_t2s_and_t2cl() {
        let t2s = custom(StaticCpuTemplate::T2S);
        let msr = &t2s.msr_modifiers[0];
        assert_eq!(msr.addr, 0x10a);
        assert_eq!(msr.bitmap.mask, u64::MAX);
        assert_eq!(msr.bitmap.value, 0x0c0a_0c4c);
        let t2cl = custom(StaticCpuTemplate::T2CL);
        let msr = &t2cl.msr_modifiers[0];
        assert_eq!(msr.bitmap.value, 0);
        // The host's RDCL_NO..TAA_NO, SBDR/FBSDP/PSDP_NO, FB_CLEAR, RRSBA, PBRSB_NO,
        // GDS_NO, RFDS_NO and RFDS_CLEAR pass through.
        assert_eq!(!msr.bitmap.mask, 0x1d0a_e1ff);
        for t in [
            StaticCpuTemplate::C3,
            StaticCpuTemplate::T2,
            StaticCpuTemplate::T2A,
        ] {
            assert!(custom(t).msr_modifiers.is_empty(), "{t}");
        }
    }

    #[test]
    fn t2a_and_t2cl_hide_what_amd_and_intel_do_not_share() {
        let t2a = custom(StaticCpuTemplate::T2A);
        let (mask, value) = filter(&t2a, 0x8000_0001, 0, Ecx);
        assert_eq!(mask & ext1_ecx::SVM, ext1_ecx::SVM);
        assert_eq!(value, 0);
        let (mask, value) = filter(&t2a, 0x8000_0008, 0, Ebx);
        assert_eq!(mask, 0x001c_0205);
        assert_eq!(value, 0x001c_0004);
        let t2cl = custom(StaticCpuTemplate::T2CL);
        let (mask, _) = filter(&t2cl, 0x8000_0001, 0, Edx);
        assert_eq!(mask, 0x07c0_0000);
        let (mask, _) = filter(&custom(StaticCpuTemplate::T2), 0x8000_0001, 0, Edx);
        assert_eq!(mask, ext1_edx::PAGE_1GB);
    }

    #[test]
    fn supported_hosts_follow_firecracker() {
        let names = |t| {
            let (vendor, models) = supported_hosts(t);
            (
                vendor,
                models.iter().map(|m| m.name).collect::<Vec<_>>().join(","),
            )
        };
        assert_eq!(
            names(StaticCpuTemplate::T2),
            (Vendor::Intel, "Skylake,Cascade Lake,Ice Lake".into())
        );
        assert_eq!(
            names(StaticCpuTemplate::T2S),
            (Vendor::Intel, "Skylake,Cascade Lake".into())
        );
        assert_eq!(
            names(StaticCpuTemplate::T2CL),
            (Vendor::Intel, "Cascade Lake,Ice Lake".into())
        );
        assert_eq!(names(StaticCpuTemplate::T2A), (Vendor::Amd, "Milan".into()));
    }
}
