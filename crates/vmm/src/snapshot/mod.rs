//! Snapshots: the state of a paused VM written to files, and read back into a new one.
//!
//! A snapshot is two files:
//! - the **state file** ([`format`]): a header with a magic, a format version and a
//!   checksum around the VM's state (every vCPU's registers, the in-kernel interrupt
//!   controllers, the PIT and the clock, the devices);
//! - the **memory file** ([`memory`]): the guest's RAM, sparse, mapped privately on
//!   restore so that loading is lazy.
//!
//! - [`cpu`]: one vCPU's state ([`cpu::VcpuState`]), saved and restored through KVM.
//! - [`vm_state`]: the VM-wide KVM state ([`vm_state::VmState`]).
//! - [`uffd`]: guest memory served by a userfaultfd page-fault handler instead of mapped
//!   from the memory file (Firecracker's `Uffd` backend).

pub mod cpu;
pub mod format;
pub mod memory;
pub mod replace;
pub mod uffd;
pub mod vm_state;
