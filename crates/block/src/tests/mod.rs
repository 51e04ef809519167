//! Layer-1 tests of the block device: guest memory and a split virtqueue laid out by
//! hand (virtio-queue's mock queue), the worker driven directly; no KVM.

mod dirty;
mod durability;
mod harness;
mod images;
mod limits;
mod malicious;
mod metrics;
mod prop;
mod requests;
mod transport;
mod update;
