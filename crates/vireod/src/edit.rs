//! Changes to a stored definition's TOML text that keep the user's comments and layout
//! (`vireoctl set --config`, `vireoctl autostart`): one key set or removed at a time.

use toml_edit::{DocumentMut, Item, Value};

/// Set (`Some`) or remove (`None`) `key` in `table` (`None`: the top level) of
/// `text`. The result is text; the caller checks it as a whole definition.
pub fn set_key(
    text: &str,
    table: Option<&str>,
    key: &str,
    value: Option<Value>,
) -> Result<String, String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("the stored definition does not parse: {e}"))?;
    let target = match table {
        None => doc.as_table_mut(),
        Some(name) => {
            if !doc.contains_key(name) {
                if value.is_none() {
                    return Ok(doc.to_string());
                }
                doc.insert(name, Item::Table(toml_edit::Table::new()));
            }
            doc[name]
                .as_table_mut()
                .ok_or_else(|| format!("'{name}' is not a table in the stored definition"))?
        }
    };
    match value {
        Some(v) => {
            target.insert(key, Item::Value(v));
        }
        None => {
            target.remove(key);
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_set_and_removed_keeping_comments() {
        let text = "# web server\nname = \"a\" # the name\n\n[machine]\nkernel = \"/k\"\n";
        let t = set_key(text, Some("resources"), "cpu_quota", Some("50%".into())).unwrap();
        let t = set_key(&t, Some("resources"), "pids_max", Some(64i64.into())).unwrap();
        let t = set_key(&t, None, "autostart", Some(true.into())).unwrap();
        assert!(
            t.starts_with("# web server\nname = \"a\" # the name\n"),
            "{t}"
        );
        assert!(
            t.contains("[resources]\ncpu_quota = \"50%\"\npids_max = 64\n"),
            "{t}"
        );
        assert!(t.contains("autostart = true"), "{t}");
        let t = set_key(&t, Some("resources"), "cpu_quota", None).unwrap();
        assert!(!t.contains("cpu_quota"), "{t}");
        // Removing from a table that does not exist changes nothing.
        let same = set_key(text, Some("resources"), "nice", None).unwrap();
        assert_eq!(same, text);
        assert!(set_key("name = ", None, "x", None).is_err());
        assert!(set_key("resources = 1\n", Some("resources"), "x", Some(1i64.into())).is_err());
    }
}
