//! The data store: one JSON document per VM, written by the host through the API
//! (`PUT`/`PATCH`/`GET /mmds`) and read by the guest over HTTP, bounded in size.

use serde_json::{Map, Value};

use crate::token::Tokens;
use api::MmdsVersion;

/// Firecracker's default bound on the stored document (its API's default payload limit).
pub const DEFAULT_SIZE_LIMIT: usize = 51_200;

/// Why the store refused a change or a read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The document would exceed the size limit.
    #[error("The MMDS data store limit of {0} bytes was exceeded.")]
    TooLarge(usize),
    /// `PATCH` before any `PUT`.
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
    /// No value at that path.
    #[error("The MMDS resource does not exist.")]
    NotFound,
    /// A value IMDS's text format cannot show (only objects and strings can).
    #[error("Cannot retrieve value. The value has an unsupported type.")]
    UnsupportedValueType,
}

/// How a value read by the guest is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The JSON value itself.
    Json,
    /// EC2 IMDS's text: an object's keys one per line (an object's with a `/`), a
    /// string's characters unquoted.
    Imds,
}

/// The metadata service of one VM: its document, version, tokens and limits. Shared by
/// the API (host side) and every NIC's stack (guest side) behind a mutex.
#[derive(Debug)]
pub struct Mmds {
    data: Option<Value>,
    size_limit: usize,
    version: MmdsVersion,
    imds_compat: bool,
    pub(crate) tokens: Tokens,
}

impl Default for Mmds {
    fn default() -> Self {
        Self::new(DEFAULT_SIZE_LIMIT)
    }
}

impl Mmds {
    /// An empty store holding at most `size_limit` bytes of serialized JSON.
    pub fn new(size_limit: usize) -> Self {
        Self {
            data: None,
            size_limit,
            version: MmdsVersion::default(),
            imds_compat: false,
            tokens: Tokens::default(),
        }
    }

    /// The version the guest's requests are served with.
    pub fn version(&self) -> MmdsVersion {
        self.version
    }

    /// Serve the guest with `version`; with `imds_compat` every read is in IMDS's text
    /// format whatever the request's `Accept`.
    pub fn configure(&mut self, version: MmdsVersion, imds_compat: bool) {
        self.version = version;
        self.imds_compat = imds_compat;
    }

    /// Whether every read is in IMDS's text format.
    pub fn imds_compat(&self) -> bool {
        self.imds_compat
    }

    fn check_size(&self, value: &Value) -> Result<(), StoreError> {
        // Serializing a Value (string keys only) cannot fail.
        let len = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
        if len > self.size_limit {
            return Err(StoreError::TooLarge(self.size_limit));
        }
        Ok(())
    }

    /// Replace the document (`PUT /mmds`).
    pub fn put(&mut self, value: Value) -> Result<(), StoreError> {
        self.check_size(&value)?;
        self.data = Some(value);
        Ok(())
    }

    /// Merge `patch` into the document as RFC 7396 says (`PATCH /mmds`); nothing changes
    /// if the result would be too large.
    pub fn patch(&mut self, patch: &Value) -> Result<(), StoreError> {
        let mut merged = self.data.clone().ok_or(StoreError::NotInitialized)?;
        merge_patch(&mut merged, patch);
        self.check_size(&merged)?;
        self.data = Some(merged);
        Ok(())
    }

    /// The whole document (`GET /mmds`): `{}` before the first `PUT`.
    pub fn document(&self) -> Value {
        match &self.data {
            Some(Value::Null) | None => Value::Object(Map::new()),
            Some(v) => v.clone(),
        }
    }

    /// The value at `path` (a JSON pointer such as `/latest/meta-data`; a trailing `/`
    /// is allowed) written out in `format`, or in IMDS's if the store is in IMDS
    /// compatibility mode.
    pub fn read(&self, path: &str, format: Format) -> Result<String, StoreError> {
        let data = self.data.as_ref().ok_or(StoreError::NotFound)?;
        let pointer = path.strip_suffix('/').unwrap_or(path);
        let value = data.pointer(pointer).ok_or(StoreError::NotFound)?;
        match (self.imds_compat, format) {
            (false, Format::Json) => Ok(value.to_string()),
            _ => imds_text(value),
        }
    }
}

/// IMDS's text form of `value`: an object's keys, one per line, those of objects
/// followed by `/`; a string as it is; anything else cannot be shown.
fn imds_text(value: &Value) -> Result<String, StoreError> {
    match value {
        Value::Object(map) => Ok(map
            .iter()
            .map(|(k, v)| {
                if v.is_object() {
                    format!("{k}/")
                } else {
                    k.clone()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")),
        Value::String(s) => Ok(s.clone()),
        _ => Err(StoreError::UnsupportedValueType),
    }
}

/// RFC 7396's JSON Merge Patch of `target` by `patch`: objects merge key by key, `null`
/// removes a key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (key, change) in changes {
            if change.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), change);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store(doc: Value) -> Mmds {
        let mut m = Mmds::default();
        m.put(doc).unwrap();
        m
    }

    #[test]
    fn reads_follow_json_pointers_in_both_formats() {
        let m = store(json!({
            "latest": {"meta-data": {"ami-id": "ami-1", "net": {"a": "b"}, "n": 3}},
            "a~b": {"c/d": "x"}
        }));
        assert_eq!(
            m.read("/latest/meta-data/ami-id", Format::Imds).unwrap(),
            "ami-1"
        );
        assert_eq!(
            m.read("/latest/meta-data/ami-id", Format::Json).unwrap(),
            "\"ami-1\""
        );
        assert_eq!(
            m.read("/latest/meta-data/", Format::Imds).unwrap(),
            "ami-id\nn\nnet/"
        );
        assert_eq!(m.read("/latest", Format::Imds).unwrap(), "meta-data/");
        assert_eq!(
            m.read("/latest/meta-data/net", Format::Json).unwrap(),
            r#"{"a":"b"}"#
        );
        assert_eq!(m.read("/latest/meta-data/n", Format::Json).unwrap(), "3");
        assert_eq!(
            m.read("/latest/meta-data/n", Format::Imds),
            Err(StoreError::UnsupportedValueType)
        );
        assert_eq!(m.read("/a~0b/c~1d", Format::Imds).unwrap(), "x");
        assert_eq!(
            m.read("/latest/nothing", Format::Json),
            Err(StoreError::NotFound)
        );
        assert_eq!(m.read("/", Format::Imds).unwrap(), "a~b/\nlatest/");
    }

    #[test]
    fn imds_compat_ignores_the_asked_format() {
        let mut m = store(json!({"k": "v"}));
        m.configure(MmdsVersion::V2, true);
        assert_eq!(m.read("/k", Format::Json).unwrap(), "v");
        assert_eq!(m.version(), MmdsVersion::V2);
    }

    #[test]
    fn an_empty_store_has_nothing_and_cannot_be_patched() {
        let mut m = Mmds::default();
        assert_eq!(m.read("/", Format::Json), Err(StoreError::NotFound));
        assert_eq!(m.document(), json!({}));
        assert_eq!(m.patch(&json!({"a": 1})), Err(StoreError::NotInitialized));
    }

    #[test]
    fn patches_merge_as_rfc_7396_says() {
        let mut m = store(json!({"a": "b", "c": {"d": "e", "f": "g"}}));
        m.patch(&json!({"a": "z", "c": {"f": null}, "new": [1]}))
            .unwrap();
        assert_eq!(m.document(), json!({"a": "z", "c": {"d": "e"}, "new": [1]}));
        // RFC 7396's appendix examples.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut t = target.clone();
            merge_patch(&mut t, &patch);
            assert_eq!(t, want, "{target} patched by {patch}");
        }
    }

    #[test]
    fn the_size_limit_refuses_and_keeps_the_old_document() {
        let mut m = Mmds::new(20);
        m.put(json!({"a": "b"})).unwrap();
        assert_eq!(
            m.put(json!({"a": "0123456789012345678"})),
            Err(StoreError::TooLarge(20))
        );
        assert_eq!(
            m.patch(&json!({"b": "0123456789012345678"})),
            Err(StoreError::TooLarge(20))
        );
        assert_eq!(m.document(), json!({"a": "b"}));
    }
}
