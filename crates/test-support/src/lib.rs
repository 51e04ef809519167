//! What Vireo's tests and benches share (a dev-dependency only, never published):
//!
//! - [`skip`]: the one policy for a test whose prerequisite (root, a tool, a kernel
//!   feature) is missing: a failure under `CI=true`, elsewhere a reported skip, and the
//!   [`require!`] macro that applies it.
//! - [`netns`]: a network namespace made for a test and deleted on drop, with the raw
//!   packet socket tests use to see a TAP's host side.
//! - [`virtq`]: the driver side of a split virtqueue in guest memory (descriptor table,
//!   avail ring, used ring), for tests that play the guest.
//! - [`host`]: the Debian guest image's directory and pseudo-terminals.

pub mod host;
pub mod netns;
pub mod skip;
pub mod virtq;

/// Apply the [`skip`] policy: evaluate a prerequisite and, if it is missing, report it
/// with [`skip::missing`] (a panic under `CI=true`) and `return` from the calling test.
///
/// - `require!(test, result)`: `result` is a `Result<T, E: Display>` (such as
///   [`skip::root`], [`skip::tool`] or [`netns::Netns::new`]); the macro's value is the
///   `T`, and the error is the reason given.
/// - `require!(test, condition, "reason {}", args...)`: a `bool`, with the reason as
///   `format!` arguments.
///
/// ```no_run
/// # fn main() {
/// use test_support::{require, skip};
/// let qemu_img = require!("qcow2_test", skip::tool("qemu-img", "qemu-utils"));
/// require!("qcow2_test", qemu_img.is_file(), "{} is not a file", qemu_img.display());
/// # }
/// ```
#[macro_export]
macro_rules! require {
    ($test:expr, $cond:expr, $($why:tt)+) => {
        if !$cond {
            $crate::skip::missing($test, &::std::format!($($why)+));
            return;
        }
    };
    ($test:expr, $result:expr $(,)?) => {
        match $result {
            ::std::result::Result::Ok(v) => v,
            ::std::result::Result::Err(why) => {
                $crate::skip::missing($test, &::std::string::ToString::to_string(&why));
                return;
            }
        }
    };
}
