//! MMDS version 2's session tokens: random, opaque to the guest, each valid for the
//! lifetime it was asked with (1 s to 6 h). At most [`MAX_TOKENS`] are live at once;
//! past that the one closest to expiry is forgotten first, so a guest asking for tokens
//! in a loop cannot grow the VMM's memory.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Shortest lifetime a token may be asked with, in seconds.
pub const MIN_TTL_SECONDS: u32 = 1;
/// Longest: 6 hours.
pub const MAX_TTL_SECONDS: u32 = 21_600;
/// Tokens live at once.
pub const MAX_TOKENS: usize = 1024;
/// Random bytes in a token (written as twice as many hex digits).
const TOKEN_BYTES: usize = 32;

/// Why no token was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A lifetime outside 1..=21600 seconds.
    #[error(
        "Invalid time to live value provided for token: {0}. Please provide a value between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}."
    )]
    InvalidTtl(u32),
    /// The host's random source failed.
    #[error("Cannot generate a token: {0}")]
    Random(String),
}

/// The live tokens and their expiry.
#[derive(Debug, Default)]
pub struct Tokens {
    live: HashMap<[u8; TOKEN_BYTES], Instant>,
}

impl Tokens {
    /// A new token valid for `ttl_seconds` from `now`, as the guest sees it.
    pub fn issue(&mut self, ttl_seconds: u32, now: Instant) -> Result<String, TokenError> {
        if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(TokenError::InvalidTtl(ttl_seconds));
        }
        let mut secret = [0u8; TOKEN_BYTES];
        fill_random(&mut secret).map_err(|e| TokenError::Random(e.to_string()))?;
        if self.live.len() >= MAX_TOKENS {
            self.live.retain(|_, expiry| *expiry > now);
        }
        if self.live.len() >= MAX_TOKENS
            && let Some(oldest) = self.live.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k)
        {
            self.live.remove(&oldest);
        }
        self.live
            .insert(secret, now + Duration::from_secs(u64::from(ttl_seconds)));
        Ok(secret.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Whether `token` was issued here and has not expired at `now`.
    pub fn is_valid(&self, token: &str, now: Instant) -> bool {
        parse_hex(token)
            .and_then(|secret| self.live.get(&secret))
            .is_some_and(|expiry| *expiry > now)
    }

    /// Tokens held (expired ones included until they are purged).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

fn parse_hex(token: &str) -> Option<[u8; TOKEN_BYTES]> {
    let bytes = token.trim().as_bytes();
    if bytes.len() != TOKEN_BYTES * 2 {
        return None;
    }
    let mut out = [0u8; TOKEN_BYTES];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hex = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

/// Fill `buf` from the kernel's random source.
pub(crate) fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into the buffer it is
        // given, which `rest` owns for the call's duration.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n.unsigned_abs();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_valid_for_its_lifetime_only() {
        let mut t = Tokens::default();
        let now = Instant::now();
        let token = t.issue(60, now).unwrap();
        assert_eq!(token.len(), 64);
        assert!(t.is_valid(&token, now));
        assert!(t.is_valid(&token, now + Duration::from_secs(59)));
        assert!(!t.is_valid(&token, now + Duration::from_secs(60)));
        let other = t.issue(60, now).unwrap();
        assert_ne!(token, other, "tokens are random");
        assert!(!t.is_valid("", now));
        assert!(!t.is_valid(&"0".repeat(64), now));
        assert!(!t.is_valid(&"zz".repeat(32), now));
        assert!(!t.is_valid(&token[..62], now));
    }

    #[test]
    fn lifetimes_outside_one_second_to_six_hours_are_refused() {
        let mut t = Tokens::default();
        let now = Instant::now();
        assert_eq!(t.issue(0, now), Err(TokenError::InvalidTtl(0)));
        assert_eq!(t.issue(21_601, now), Err(TokenError::InvalidTtl(21_601)));
        assert!(t.issue(1, now).is_ok());
        assert!(t.issue(21_600, now).is_ok());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_guest_asking_in_a_loop_holds_a_bounded_number() {
        let mut t = Tokens::default();
        let now = Instant::now();
        let first = t.issue(10, now).unwrap();
        let long = t.issue(21_600, now).unwrap();
        for i in 0..3 * MAX_TOKENS {
            t.issue(100 + (i % 50) as u32, now).unwrap();
        }
        assert_eq!(t.len(), MAX_TOKENS);
        assert!(
            !t.is_valid(&first, now),
            "the one closest to expiry went first"
        );
        assert!(t.is_valid(&long, now), "a long-lived token stays");
    }
}
