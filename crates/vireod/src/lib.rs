//! vireod, the Vireo host manager: many VMs per host, defined once, supervised, their
//! resources adjusted live. Each VM is one `vireo` process, driven only through its API
//! across the process boundary (this crate never links the VMM).
//!
//! One module per concern:
//! - [`store`]: definitions, states and the event log in SQLite;
//! - [`manager`]: the VMs' lives (start, watch, stop, restart by policy, re-adopt), one
//!   change at a time per VM;
//! - [`process`]: spawning and watching one `vireo` (pidfd), finding it again;
//! - [`cgroups`]: each VM's cgroup on v1 or v2, resources applied live;
//! - [`console`]: each VM's serial console: log, history, viewers;
//! - [`resources`] and [`edit`]: `vireoctl set`'s values and the definition text edits;
//! - [`server`]: the REST API on a Unix socket; [`metrics`]: its Prometheus page.

pub mod cgroups;
pub mod console;
pub mod device_counters;
pub mod edit;
pub mod manager;
pub mod metrics;
pub mod process;
pub mod resources;
pub mod server;
pub mod store;
