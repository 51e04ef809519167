//! vireod, the Vireo host manager: many VMs per host, defined once, supervised, their
//! resources adjusted live. Each VM is one `vireo` process, driven only through its API
//! across the process boundary.
//!
//! One module per concern; so far [`store`] (definitions, state and events in SQLite).

pub mod store;
