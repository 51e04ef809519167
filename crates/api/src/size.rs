//! Memory sizes as users write them: `512`, `512M`, `512MiB`, `2G`, `1048576K`.

/// Why a size string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// Nothing was given.
    #[error("empty size")]
    Empty,
    /// The number part is not a whole decimal number.
    #[error("invalid size '{0}': expected a whole number with an optional K, M, G or T suffix")]
    Malformed(String),
    /// The size does not fit in 64 bits.
    #[error("size '{0}' is too large")]
    Overflow(String),
}

/// Parse a size in bytes. A bare number is MiB (as QEMU's `-m`); the suffixes K, M, G and T
/// (any case, optionally followed by `iB` or `B`) are powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::Malformed(text.to_string()));
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 20,
        "k" | "kb" | "kib" => 10,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "b" => 0,
        _ => return Err(SizeError::Malformed(text.to_string())),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_string()))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_suffix() {
        assert_eq!(parse_size("128"), Ok(128 << 20));
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
        assert_eq!(parse_size("4096k"), Ok(4 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size(" 64M "), Ok(64 << 20));
    }

    #[test]
    fn refuses_malformed_sizes() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        for bad in ["M", "-1", "1.5G", "12X", "0x100", "1 G", "1GiBs"] {
            assert_eq!(
                parse_size(bad),
                Err(SizeError::Malformed(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_overflow() {
        assert_eq!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow("99999999999999999999".into()))
        );
        assert_eq!(
            parse_size("17179869184T"),
            Err(SizeError::Overflow("17179869184T".into()))
        );
    }
}
