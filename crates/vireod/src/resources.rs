//! `vireoctl set`'s values: checked with the definition's own rules (a `[resources]`
//! table parsed as a definition would be), then applied to the running VM's resources or
//! written into its stored definition.

use std::path::Path;

use manager_types::api::{ApiError, ErrorCode, SetRequest};
use manager_types::{Definition, Resources};
use toml_edit::Value;

/// One change: a `[resources]` key and its new value (`None`: removed, the default).
pub type Edit = (&'static str, Option<Value>);

fn text_or_none(key: &'static str, v: &Option<String>, edits: &mut Vec<Edit>) {
    if let Some(v) = v {
        let value = (!v.eq_ignore_ascii_case("none")).then(|| Value::from(v.as_str()));
        edits.push((key, value));
    }
}

/// The changes a request asks for (the balloon aside), each checked.
pub fn edits(req: &SetRequest) -> Result<Vec<Edit>, ApiError> {
    let mut edits: Vec<Edit> = Vec::new();
    if let Some(w) = req.cpu_weight {
        edits.push(("cpu_weight", Some(i64::from(w).into())));
    }
    text_or_none("cpu_quota", &req.cpu_quota, &mut edits);
    text_or_none("cpuset", &req.cpuset, &mut edits);
    text_or_none("memory_max", &req.memory_max, &mut edits);
    text_or_none("memory_high", &req.memory_high, &mut edits);
    if let Some(w) = req.io_weight {
        edits.push(("io_weight", Some(i64::from(w).into())));
    }
    if let Some(p) = req.pids_max {
        edits.push(("pids_max", Some(i64::from(p).into())));
    }
    if let Some(n) = req.nice {
        edits.push(("nice", Some(i64::from(n).into())));
    }
    if edits.is_empty() && req.balloon.is_none() {
        return Err(ApiError::new(ErrorCode::BadRequest, "nothing to change"));
    }
    checked(&edits)?;
    Ok(edits)
}

/// The values of `edits` as a definition reads them.
fn checked(edits: &[Edit]) -> Result<Resources, ApiError> {
    let mut text = String::from("name = \"set\"\n[machine]\nkernel = \"/k\"\n[resources]\n");
    for (key, value) in edits {
        if let Some(v) = value {
            text.push_str(&format!("{key} = {}\n", v.to_string().trim()));
        }
    }
    Definition::parse(Path::new("set"), &text)
        .map(|d| d.resources)
        .map_err(|e| {
            // Line numbers of the made-up text mean nothing to the user: the field does.
            let field = e.field.unwrap_or_else(|| "resources".into());
            let field = field
                .strip_prefix("resources.")
                .unwrap_or(&field)
                .to_string();
            ApiError::new(ErrorCode::BadRequest, format!("{field}: {}", e.message))
        })
}

/// Apply `edits` to `r`.
pub fn apply_edits(r: &mut Resources, edits: &[Edit]) -> Result<(), ApiError> {
    let new = checked(edits)?;
    for (key, _) in edits {
        match *key {
            "cpu_weight" => r.cpu_weight = new.cpu_weight,
            "cpu_quota" => r.cpu_quota_percent = new.cpu_quota_percent,
            "cpuset" => r.cpuset = new.cpuset.clone(),
            "memory_max" => r.memory_max = new.memory_max,
            "memory_high" => r.memory_high = new.memory_high,
            "io_weight" => r.io_weight = new.io_weight,
            "pids_max" => r.pids_max = new.pids_max,
            "nice" => r.nice = new.nice,
            _ => {}
        }
    }
    if let (Some(high), Some(max)) = (r.memory_high, r.memory_max)
        && high > max
    {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "memory_high: is above memory_max",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> SetRequest {
        SetRequest::default()
    }

    #[test]
    fn values_are_checked_as_a_definition_checks_them() {
        let e = edits(&SetRequest {
            cpu_quota: Some("50".into()),
            ..req()
        })
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.starts_with("cpu_quota: "), "{}", e.message);
        let e = edits(&SetRequest {
            nice: Some(40),
            ..req()
        })
        .unwrap_err();
        assert_eq!(e.message, "nice: must be -20 to 19");
        assert!(edits(&req()).is_err(), "nothing to change");
        assert!(
            edits(&SetRequest {
                balloon: Some("64M".into()),
                ..req()
            })
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn edits_change_only_their_fields_and_none_removes() {
        let mut r = Resources {
            cpu_quota_percent: Some(20),
            memory_max: Some(1 << 30),
            pids_max: Some(100),
            ..Resources::default()
        };
        let e = edits(&SetRequest {
            cpu_quota: Some("150%".into()),
            memory_max: Some("none".into()),
            memory_high: Some("512M".into()),
            ..req()
        })
        .unwrap();
        apply_edits(&mut r, &e).unwrap();
        assert_eq!(r.cpu_quota_percent, Some(150));
        assert_eq!(r.memory_max, None);
        assert_eq!(r.memory_high, Some(512 << 20));
        assert_eq!(r.pids_max, Some(100));
        // high above max, across the old and the new values.
        let mut r = Resources {
            memory_max: Some(256 << 20),
            ..Resources::default()
        };
        let e = edits(&SetRequest {
            memory_high: Some("1G".into()),
            ..req()
        })
        .unwrap();
        assert!(apply_edits(&mut r, &e).is_err());
    }
}
