//! Vireo's virtual machine: everything between `/dev/kvm` and a running guest.
//!
//! The modules mirror the machine. Dependencies flow one way, downward:
//! [`kvm`] and [`memory`] ← [`bus`] and [`devices`] ← [`vm`] and [`vcpu`] ← [`builder`].
//! A device never reaches up into the builder; it is handed what it needs.

pub mod arch;
pub mod builder;
pub mod bus;
pub mod device_manager;
pub mod device_models;
pub mod devices;
pub mod event_loop;
pub mod kvm;
pub mod kvm_probe;
pub mod loader;
pub mod memory;
pub mod metrics;
pub mod snapshot;
pub mod snapshot_vm;
pub mod stop;
pub mod update;
pub mod vcpu;
pub mod vm;
