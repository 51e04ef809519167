//! What the host manager's parts share (vireod, vireoctl, the dashboard, cloud drivers):
//! VM definitions as users write them ([`definition`]), the bodies of vireod's REST API
//! ([`api`]) and a small HTTP client on a Unix socket ([`client`]) for vireod's API and
//! each VM's `vireo` API.
//!
//! The manager talks to each VM only through `vireo`'s API across the process boundary;
//! this crate depends on `api` (configuration types, no KVM, no I/O) and nothing below it.

pub mod api;
pub mod client;
pub mod definition;

pub use definition::{Definition, DefinitionError, IoLimits, Resources, RestartPolicy};
