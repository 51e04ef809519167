//! Emulated devices. Each holds its logic and answers bus accesses; none knows the VM.

pub mod boot_timer;
pub mod legacy;
pub mod read_only_pmem;
pub mod vmgenid;
