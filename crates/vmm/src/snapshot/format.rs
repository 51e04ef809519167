//! The snapshot state file: a small header, a JSON body, a checksum.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "VIREOSNP"
//!      8     4  format version (little-endian u32), FORMAT_VERSION
//!     12     4  reserved, zero
//!     16     8  body length in bytes (little-endian u64)
//!     24     n  body: the state as JSON
//!   24+n     4  CRC-32 (IEEE) of every byte before it (little-endian u32)
//! ```
//!
//! JSON keeps the body readable with ordinary tools and lets later versions add fields;
//! the KVM structures inside it are byte strings (kvm-bindings' serde form). Reading
//! checks, in order: the magic (a foreign file), the version, the length (a truncated
//! file), the checksum (a corrupted file), then the body itself.

use std::io::{self, Read, Write};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The file's first bytes.
pub const MAGIC: [u8; 8] = *b"VIREOSNP";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Header bytes before the body.
const HEADER_LEN: usize = 24;
/// Largest body accepted (a state file is kilobytes per vCPU; this refuses nonsense
/// lengths before allocating).
const MAX_BODY: u64 = 256 << 20;

/// Why a state file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the magic: not a Vireo snapshot.
    #[error("{0}: not a Vireo snapshot state file (bad magic)")]
    Foreign(String),
    /// Written by a format this build does not read.
    #[error("{path}: snapshot format version {found}; this vireo reads version {FORMAT_VERSION}")]
    Version {
        /// The file.
        path: String,
        /// The version in the file.
        found: u32,
    },
    /// Shorter than its header says.
    #[error("{path}: truncated ({len} bytes; the header promises {expected})")]
    Truncated {
        /// The file.
        path: String,
        /// Its length.
        len: u64,
        /// The length its header implies.
        expected: u64,
    },
    /// Longer than its header says.
    #[error("{path}: {extra} unexpected bytes after the checksum")]
    Trailing {
        /// The file.
        path: String,
        /// How many.
        extra: u64,
    },
    /// The checksum does not match: the file was corrupted.
    #[error(
        "{path}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}); the file is corrupted"
    )]
    Checksum {
        /// The file.
        path: String,
        /// In the file.
        stored: u32,
        /// Of the bytes read.
        computed: u32,
    },
    /// The body is not the state this build expects.
    #[error("{path}: malformed snapshot state: {reason}")]
    Body {
        /// The file.
        path: String,
        /// The parser's message.
        reason: String,
    },
}

/// Encode `state` as a state file.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_vec(state)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decode a state file's bytes; `path` names it in errors.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], path: &str) -> Result<T, FormatError> {
    let p = || path.to_string();
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(FormatError::Foreign(p()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Truncated {
            path: p(),
            len: bytes.len() as u64,
            expected: HEADER_LEN as u64 + 4,
        });
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version {
            path: p(),
            found: version,
        });
    }
    let body_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or([0; 8]));
    let expected = (HEADER_LEN as u64)
        .saturating_add(body_len)
        .saturating_add(4);
    let len = bytes.len() as u64;
    if body_len > MAX_BODY || len < expected {
        return Err(FormatError::Truncated {
            path: p(),
            len,
            expected,
        });
    }
    if len > expected {
        return Err(FormatError::Trailing {
            path: p(),
            extra: len - expected,
        });
    }
    let end = HEADER_LEN + body_len as usize;
    let stored = word(end);
    let computed = crc32fast::hash(&bytes[..end]);
    if stored != computed {
        return Err(FormatError::Checksum {
            path: p(),
            stored,
            computed,
        });
    }
    serde_json::from_slice(&bytes[HEADER_LEN..end]).map_err(|e| FormatError::Body {
        path: p(),
        reason: e.to_string(),
    })
}

/// Write `state` to a new file that replaces `path` once complete, synced to disk.
pub fn write_file<T: Serialize>(path: &Path, state: &T) -> Result<(), FormatError> {
    let io_err = |source| FormatError::Io {
        path: path.display().to_string(),
        source,
    };
    let bytes = encode(state).map_err(|e| FormatError::Body {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let out = super::replace::Replacement::create(path).map_err(io_err)?;
    out.file().write_all(&bytes).map_err(io_err)?;
    out.commit().map_err(io_err)
}

/// Read and check the state file at `path`.
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, FormatError> {
    let name = path.display().to_string();
    let io_err = |source| FormatError::Io {
        path: name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let len = meta.len();
    // Never read more than the file said it had (a file that grows is not a snapshot).
    let mut file = file.take(len);
    if len > MAX_BODY + HEADER_LEN as u64 + 4 {
        // Check the header alone before reading a huge file.
        let mut head = [0u8; HEADER_LEN];
        let n = file.read(&mut head).map_err(io_err)?;
        return Err(match decode::<serde_json::Value>(&head[..n], &name) {
            Err(e @ (FormatError::Foreign(_) | FormatError::Version { .. })) => e,
            _ => FormatError::Trailing {
                path: name.clone(),
                extra: len,
            },
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes).map_err(io_err)?;
    decode(&bytes, &name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "vm".into(),
            values: vec![1, 2, u64::MAX],
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(&bytes[..8], b"VIREOSNP");
        assert_eq!(decode::<Sample>(&bytes, "s").unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode(&sample()).unwrap();
        for len in 0..bytes.len() {
            let err = decode::<Sample>(&bytes[..len], "s").unwrap_err();
            assert!(
                matches!(err, FormatError::Foreign(_) | FormatError::Truncated { .. }),
                "{len}: {err}"
            );
        }
    }

    #[test]
    fn every_flipped_bit_after_the_header_is_refused() {
        let bytes = encode(&sample()).unwrap();
        for at in HEADER_LEN..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[at] ^= 1 << bit;
                let err = decode::<Sample>(&bad, "s").unwrap_err();
                assert!(matches!(err, FormatError::Checksum { .. }), "{at}: {err}");
            }
        }
    }

    #[test]
    fn foreign_version_trailing_and_length_errors() {
        let bytes = encode(&sample()).unwrap();
        let err = decode::<Sample>(b"\x7fELF\x02\x01\x01\0rest of an ELF file", "k").unwrap_err();
        assert_eq!(
            err.to_string(),
            "k: not a Vireo snapshot state file (bad magic)"
        );

        let mut v2 = bytes.clone();
        v2[8] = 2;
        let err = decode::<Sample>(&v2, "s").unwrap_err();
        assert_eq!(
            err.to_string(),
            "s: snapshot format version 2; this vireo reads version 1"
        );

        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode::<Sample>(&long, "s"),
            Err(FormatError::Trailing { extra: 1, .. })
        ));

        let mut huge = bytes.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode::<Sample>(&huge, "s"),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn a_body_of_another_shape_is_malformed_not_a_panic() {
        let bytes = encode(&vec![1u8, 2, 3]).unwrap();
        let err = decode::<Sample>(&bytes, "s").unwrap_err();
        assert!(matches!(err, FormatError::Body { .. }), "{err}");
    }

    #[test]
    fn a_directory_or_device_is_not_read() {
        for path in ["/", "/dev/zero"] {
            let err = read_file::<Sample>(Path::new(path)).unwrap_err();
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
    }

    #[test]
    fn files_round_trip_and_missing_files_are_named() {
        let path = std::env::temp_dir().join(format!("vireo-format-{}", std::process::id()));
        write_file(&path, &sample()).unwrap();
        assert_eq!(read_file::<Sample>(&path).unwrap(), sample());
        std::fs::remove_file(&path).unwrap();
        let err = read_file::<Sample>(&path).unwrap_err();
        assert!(err.to_string().contains("vireo-format-"), "{err}");
    }
}
