//! CPUID as each vCPU sees it: KVM's supported set, normalised per vCPU.
//!
//! KVM reports what the host can virtualise; the VMM must still say who this vCPU is (APIC
//! id), how the vCPUs are arranged (one or two threads per core, as Firecracker's `smt`
//! says, all cores in one package), that a hypervisor is present, and keep cache leaves
//! consistent with that topology.

use kvm_bindings::{KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_INTEL: u32 = 0x4;
const LEAF_POWER: u32 = 0x6;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_EXT_MAX: u32 = 0x8000_0000;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_CACHE_AMD: u32 = 0x8000_001d;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

/// Leaf 1 ECX: TSC deadline timer.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: the package has more than one logical processor.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0x8000_0001 ECX: AMD's topology extensions (leaves 0x8000_001d and 0x8000_001e).
const ECX_TOPOEXT: u32 = 1 << 22;
/// Leaf 6 EAX: turbo boost; leaf 6 ECX: energy-performance bias. Neither is the guest's.
const EAX_TURBO: u32 = 1 << 1;
const ECX_EPB: u32 = 1 << 3;
/// Topology level types in leaves 0xb/0x1f ECX bits 15..8.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;
/// "KVMKVMKVM\0\0\0" as the three signature registers of leaf 0x4000_0000.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// The x86 vendor, from leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD or HygonGenuine.
    Amd,
    /// Anything else.
    Other,
}

/// What a vCPU's CPUID depends on.
#[derive(Debug, Clone, Copy)]
pub struct VcpuTopology {
    /// This vCPU's index, which is also its APIC id.
    pub cpu_index: u32,
    /// How many vCPUs the VM has (all in one package).
    pub cpu_count: u32,
    /// Threads per core: 1, or 2 with SMT (then `cpu_count` is even, or 1); APIC id bit 0
    /// is then the thread, the bits above it the core.
    pub threads_per_core: u32,
    /// Whether KVM emulates the TSC deadline timer.
    pub tsc_deadline: bool,
}

/// The vendor named by leaf 0.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    match entries.iter().find(|e| e.function == LEAF_VENDOR) {
        Some(e) if [e.ebx, e.edx, e.ecx] == [0x756e_6547, 0x4965_6e69, 0x6c65_746e] => {
            Vendor::Intel
        }
        Some(e) if [e.ebx, e.edx, e.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163] => Vendor::Amd,
        Some(e) if [e.ebx, e.edx, e.ecx] == [0x6f67_7948, 0x6e65_476e, 0x656e_6975] => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to hold `count` distinct ids.
fn id_bits(count: u32) -> u32 {
    count.max(1).next_power_of_two().trailing_zeros()
}

/// Normalise `entries` (KVM's supported CPUID) for one vCPU.
pub fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, topo: VcpuTopology) {
    let vendor = vendor(entries);
    let apic_id = topo.cpu_index;
    let count = topo.cpu_count.max(1);
    let threads = topo.threads_per_core.clamp(1, count);
    let cores = count.div_ceil(threads);

    // Linux takes an AMD CPU's threads per core from leaf 0x8000_001e, and only when the
    // topology extensions bit says the leaf is there. A host whose KVM lacks them (an
    // emulated CPU, such as the nested test host's) gets both with SMT, as Firecracker
    // gives them to every AMD guest; the loop below fills the leaf in.
    if vendor == Vendor::Amd && threads > 1 {
        if !entries.iter().any(|e| e.function == LEAF_AMD_TOPOLOGY) {
            entries.push(kvm_cpuid_entry2 {
                function: LEAF_AMD_TOPOLOGY,
                ..Default::default()
            });
        }
        for entry in entries.iter_mut() {
            match entry.function {
                LEAF_EXT_MAX => entry.eax = entry.eax.max(LEAF_AMD_TOPOLOGY),
                LEAF_EXT_FEATURES => entry.ecx |= ECX_TOPOEXT,
                _ => {}
            }
        }
    }

    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors per package,
                // [15:8] CLFLUSH line size in 8-byte units.
                let logical = count.next_power_of_two().min(255);
                entry.ebx = (apic_id << 24) | (logical << 16) | (8 << 8) | (entry.ebx & 0xff);
                entry.ecx |= ECX_HYPERVISOR;
                if topo.tsc_deadline {
                    entry.ecx |= ECX_TSC_DEADLINE;
                } else {
                    entry.ecx &= !ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_INTEL if vendor == Vendor::Intel => {
                cache_sharing(entry, count, threads);
                // EAX[31:26]: addressable core ids in the package, minus one.
                let core_ids = (1u32 << id_bits(cores)).min(64);
                entry.eax = (entry.eax & 0x03ff_ffff) | ((core_ids - 1) << 26);
            }
            LEAF_CACHE_AMD if vendor == Vendor::Amd => cache_sharing(entry, count, threads),
            LEAF_POWER => {
                entry.eax &= !EAX_TURBO;
                entry.ecx &= !ECX_EPB;
            }
            LEAF_AMD_SIZES if vendor == Vendor::Amd => {
                // ECX[7:0]: cores in the package minus one; [15:12]: APIC id bits for cores.
                entry.ecx = (entry.ecx & !0xf0ff) | (id_bits(count) << 12) | (count - 1);
            }
            LEAF_AMD_TOPOLOGY if vendor == Vendor::Amd => {
                entry.eax = apic_id; // Extended APIC id.
                // EBX[15:8]: threads per core - 1; [7:0]: core id.
                entry.ebx = ((threads - 1) << 8) | ((apic_id / threads) & 0xff);
                entry.ecx = 0; // Node 0, one node per package.
            }
            _ => {}
        }
    }

    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        // Only rewrite the topology leaves the host's KVM reports at all.
        if entries.iter().any(|e| e.function == leaf) {
            entries.retain(|e| e.function != leaf);
            entries
                .extend((0..3).map(|index| topology_entry(leaf, index, apic_id, count, threads)));
        }
    }

    match entries.iter_mut().find(|e| e.function == LEAF_HYPERVISOR) {
        Some(e) => [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE,
        None => entries.push(kvm_cpuid_entry2 {
            function: LEAF_HYPERVISOR,
            eax: LEAF_HYPERVISOR + 1,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        }),
    }
}

/// Cache leaves 4 and 0x8000_001d, EAX bits 25..14: logical processors sharing this cache minus
/// one. Level 1 and 2 caches are per core (its threads share them); the last level is shared
/// by all.
fn cache_sharing(entry: &mut kvm_cpuid_entry2, count: u32, threads: u32) {
    let level = (entry.eax >> 5) & 0x7;
    let sharing = if level >= 3 { count } else { threads };
    entry.eax = (entry.eax & !(0xfff << 14)) | (((sharing - 1) & 0xfff) << 14);
}

/// Leaf 0xb/0x1f sub-leaf `index`: SMT level (the threads of a core), core level (all vCPUs),
/// then the invalid level that ends the list; EAX is the APIC id shift to the next level, EDX
/// always the x2APIC id.
fn topology_entry(
    function: u32,
    index: u32,
    apic_id: u32,
    count: u32,
    threads: u32,
) -> kvm_cpuid_entry2 {
    let thread_bits = id_bits(threads);
    let (eax, ebx, level) = match index {
        0 => (thread_bits, threads, LEVEL_SMT),
        1 => (
            thread_bits + id_bits(count.div_ceil(threads)),
            count,
            LEVEL_CORE,
        ),
        _ => (0, 0, 0),
    };
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level << 8) | index,
        edx: apic_id,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn intel_host() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            leaf(1, 0, [0x906ea, 0x00ff_0800, 0x7ffa_3203, 0x0f8b_fbff]),
            leaf(4, 0, [0x1c00_4121, 0, 0, 0]), // L1d
            leaf(4, 3, [0x1c03_c163, 0, 0, 0]), // L3 shared by 16
            leaf(6, 0, [0x4 | EAX_TURBO, 0, ECX_EPB | 1, 0]),
            leaf(0xb, 0, [1, 2, 0x100, 7]),
            leaf(0xb, 1, [4, 16, 0x201, 7]),
            leaf(0x4000_0000, 0, [0x4000_0001, 0, 0, 0]),
        ]
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    #[test]
    fn leaf1_names_this_vcpu() {
        let mut entries = intel_host();
        normalize(
            &mut entries,
            VcpuTopology {
                cpu_index: 2,
                cpu_count: 3,
                tsc_deadline: true,
                threads_per_core: 1,
            },
        );
        let l1 = find(&entries, 1, 0);
        assert_eq!(l1.ebx >> 24, 2, "APIC id");
        assert_eq!(
            (l1.ebx >> 16) & 0xff,
            4,
            "logical count rounded to a power of two"
        );
        assert_eq!((l1.ebx >> 8) & 0xff, 8, "CLFLUSH 64 bytes");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);

        let mut entries = intel_host();
        normalize(
            &mut entries,
            VcpuTopology {
                cpu_index: 0,
                cpu_count: 1,
                tsc_deadline: false,
                threads_per_core: 1,
            },
        );
        let l1 = find(&entries, 1, 0);
        assert_eq!(l1.ebx >> 16, 1);
        assert_eq!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaves_describe_one_package_of_single_thread_cores() {
        let mut entries = intel_host();
        normalize(
            &mut entries,
            VcpuTopology {
                cpu_index: 5,
                cpu_count: 6,
                tsc_deadline: false,
                threads_per_core: 1,
            },
        );
        let smt = find(&entries, 0xb, 0);
        let core = find(&entries, 0xb, 1);
        let end = find(&entries, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        assert_eq!((end.ebx, (end.ecx >> 8) & 0xff, end.edx), (0, 0, 5));
        assert!(
            entries
                .iter()
                .all(|e| e.function != 0xb || e.flags == KVM_CPUID_FLAG_SIGNIFCANT_INDEX)
        );
        // The host had no leaf 0x1f; none is invented.
        assert!(entries.iter().all(|e| e.function != 0x1f));
    }

    /// Firecracker's `smt`: two threads per core; APIC id bit 0 is the thread.
    #[test]
    fn smt_puts_two_threads_in_each_core() {
        let mut entries = intel_host();
        normalize(
            &mut entries,
            VcpuTopology {
                cpu_index: 3,
                cpu_count: 4,
                tsc_deadline: false,
                threads_per_core: 2,
            },
        );
        let smt = find(&entries, 0xb, 0);
        let core = find(&entries, 0xb, 1);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (1, 2, 0x100, 3));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));
        let l1d = find(&entries, 4, 0);
        let l3 = find(&entries, 4, 3);
        assert_eq!(
            (l1d.eax >> 14) & 0xfff,
            1,
            "L1 shared by a core's 2 threads"
        );
        assert_eq!((l3.eax >> 14) & 0xfff, 3, "L3 shared by all 4");
        assert_eq!(l3.eax >> 26, 1, "2 core ids");

        // One vCPU with SMT is one thread (Firecracker allows 1 or an even count).
        let mut entries = intel_host();
        normalize(
            &mut entries,
            VcpuTopology {
                cpu_index: 0,
                cpu_count: 1,
                tsc_deadline: false,
                threads_per_core: 2,
            },
        );
        assert_eq!(find(&entries, 0xb, 0).ebx, 1);

        let mut entries = vec![
            leaf(0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            leaf(0x8000_001d, 0, [0x121, 0, 0, 0]),
            leaf(0x8000_001e, 0, [9, 0x105, 3, 0]),
        ];
        normalize(
            &mut entries,
            VcpuTopology {
                cpu_index: 3,
                cpu_count: 4,
                tsc_deadline: false,
                threads_per_core: 2,
            },
        );
        let topo = find(&entries, 0x8000_001e, 0);
        assert_eq!((topo.eax, topo.ebx), (3, 0x101), "thread 1 of core 1");
        assert_eq!((find(&entries, 0x8000_001d, 0).eax >> 14) & 0xfff, 1);
    }

    /// An AMD host whose KVM has no topology extensions (an emulated CPU): with SMT the
    /// guest gets them, with leaf 0x8000_001e; without SMT nothing changes.
    #[test]
    fn smt_on_amd_without_topology_extensions_adds_them() {
        let host = || {
            vec![
                leaf(0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
                leaf(0x8000_0000, 0, [0x8000_0008, 0, 0, 0]),
                leaf(0x8000_0001, 0, [0, 0, 0x1, 0]),
            ]
        };
        let topo = |threads_per_core| VcpuTopology {
            cpu_index: 2,
            cpu_count: 4,
            tsc_deadline: false,
            threads_per_core,
        };
        let mut entries = host();
        normalize(&mut entries, topo(2));
        assert_eq!(find(&entries, 0x8000_0001, 0).ecx, 0x1 | ECX_TOPOEXT);
        assert_eq!(find(&entries, 0x8000_0000, 0).eax, 0x8000_001e);
        let t = find(&entries, 0x8000_001e, 0);
        assert_eq!((t.eax, t.ebx, t.ecx), (2, 0x101, 0), "thread 0 of core 1");

        let mut entries = host();
        normalize(&mut entries, topo(1));
        assert_eq!(find(&entries, 0x8000_0001, 0).ecx, 0x1);
        assert_eq!(find(&entries, 0x8000_0000, 0).eax, 0x8000_0008);
        assert!(entries.iter().all(|e| e.function != 0x8000_001e));
    }

    #[test]
    fn cache_leaves_follow_the_topology() {
        let mut entries = intel_host();
        normalize(
            &mut entries,
            VcpuTopology {
                cpu_index: 0,
                cpu_count: 4,
                tsc_deadline: false,
                threads_per_core: 1,
            },
        );
        let l1d = find(&entries, 4, 0);
        let l3 = find(&entries, 4, 3);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0, "L1 per core");
        assert_eq!((l3.eax >> 14) & 0xfff, 3, "L3 shared by 4");
        assert_eq!(l3.eax >> 26, 3, "4 core ids");
        assert_eq!(l3.eax & 0x3fff, 0x0163 & 0x3fff, "type and level untouched");
    }

    #[test]
    fn power_leaf_and_hypervisor_signature() {
        let mut entries = intel_host();
        normalize(
            &mut entries,
            VcpuTopology {
                cpu_index: 0,
                cpu_count: 1,
                tsc_deadline: false,
                threads_per_core: 1,
            },
        );
        let l6 = find(&entries, 6, 0);
        assert_eq!((l6.eax, l6.ecx), (0x4, 1));
        let hv = find(&entries, 0x4000_0000, 0);
        let sig: Vec<u8> = [hv.ebx, hv.ecx, hv.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0");
        assert_eq!(hv.eax, 0x4000_0001);
    }

    #[test]
    fn hypervisor_leaf_added_when_missing() {
        let mut entries = vec![leaf(0, 0, [1, 0, 0, 0])];
        normalize(
            &mut entries,
            VcpuTopology {
                cpu_index: 0,
                cpu_count: 1,
                tsc_deadline: false,
                threads_per_core: 1,
            },
        );
        assert_eq!(find(&entries, 0x4000_0000, 0).ebx, KVM_SIGNATURE[0]);
    }

    #[test]
    fn amd_leaves() {
        let mut entries = vec![
            leaf(0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            leaf(0x8000_0008, 0, [0x3030, 0, 0x700f, 0]),
            leaf(0x8000_001d, 0, [0x121, 0, 0, 0]),
            leaf(0x8000_001d, 3, [0x163, 0, 0, 0]),
            leaf(0x8000_001e, 0, [9, 0x105, 3, 0]),
        ];
        assert_eq!(vendor(&entries), Vendor::Amd);
        normalize(
            &mut entries,
            VcpuTopology {
                cpu_index: 3,
                cpu_count: 4,
                tsc_deadline: false,
                threads_per_core: 1,
            },
        );
        let sizes = find(&entries, 0x8000_0008, 0);
        assert_eq!((sizes.ecx & 0xff, (sizes.ecx >> 12) & 0xf), (3, 2));
        let topo = find(&entries, 0x8000_001e, 0);
        assert_eq!((topo.eax, topo.ebx, topo.ecx), (3, 3, 0));
        assert_eq!((find(&entries, 0x8000_001d, 3).eax >> 14) & 0xfff, 3);
        assert_eq!((find(&entries, 0x8000_001d, 0).eax >> 14) & 0xfff, 0);
    }

    /// The invariant-TSC bit (CPUID 0x8000_0007 EDX[8]) reaches the guest as KVM offers
    /// it: without it a multi-vCPU guest on an AMD host takes its TSCs as unsynchronised.
    #[test]
    fn invariant_tsc_is_passed_through() {
        for edx in [1 << 8, 0] {
            let mut entries = vec![
                leaf(0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
                leaf(0x8000_0007, 0, [0, 0, 0, edx]),
            ];
            normalize(
                &mut entries,
                VcpuTopology {
                    cpu_index: 1,
                    cpu_count: 2,
                    tsc_deadline: true,
                    threads_per_core: 1,
                },
            );
            assert_eq!(find(&entries, 0x8000_0007, 0).edx, edx);
        }
    }
}
