//! The configuration reference, generated from the configuration types themselves: each key is
//! declared once, with its doc comment and its default, through [`config_section!`], and
//! `docs/CONFIG.md` is rendered from those declarations (as DataFusion does for its options). A
//! unit test fails while the checked-in file differs from what the code declares.

/// One key of a section, as declared.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    pub key: &'static str,
    /// The Rust type, as written in the declaration.
    pub ty: &'static str,
    /// The doc comment, one `///` line per line.
    pub doc: &'static str,
}

/// A configuration struct whose keys carry their docs.
pub trait Documented: serde::Serialize + Default {
    /// The struct's own doc comment.
    const DOC: &'static str;
    const KEYS: &'static [KeyDoc];
}

/// Declares a configuration struct: every field with its doc comment and its default. Generates
/// the struct (serde, unknown keys refused), its `Default`, and its [`Documented`] entries.
macro_rules! config_section {
    (
        $(#[doc = $struct_doc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                pub $field:ident: $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[doc = $struct_doc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($field: $default,)*
                }
            }
        }

        impl $crate::config_reference::Documented for $name {
            const DOC: &'static str = concat!($($struct_doc, "\n",)*);
            const KEYS: &'static [$crate::config_reference::KeyDoc] = &[
                $($crate::config_reference::KeyDoc {
                    key: stringify!($field),
                    ty: stringify!($ty),
                    doc: concat!($($doc, "\n",)*),
                },)*
            ];
        }
    };
}
pub(crate) use config_section;

/// One section of the reference: its name (empty for the top level), doc, keys and defaults.
struct Section {
    name: &'static str,
    doc: &'static str,
    keys: &'static [KeyDoc],
    defaults: serde_json::Value,
}

fn section<T: Documented>(name: &'static str) -> Section {
    Section {
        name,
        doc: T::DOC,
        keys: T::KEYS,
        defaults: serde_json::to_value(T::default()).unwrap_or_default(),
    }
}

fn sections() -> [Section; 9] {
    use crate::config::{
        BatchConfig, CdcConfig, KafkaConfig, LakeConfig, LanderConfig, PlatformConfig,
        QuarantineConfig, ServingConfig, SpeedConfig,
    };
    [
        section::<PlatformConfig>(""),
        section::<SpeedConfig>("speed"),
        section::<LanderConfig>("lander"),
        section::<LakeConfig>("lake"),
        section::<BatchConfig>("batch"),
        section::<ServingConfig>("serving"),
        section::<CdcConfig>("cdc"),
        section::<QuarantineConfig>("quarantine"),
        section::<KafkaConfig>("kafka"),
    ]
}

/// The whole reference, as checked in at `docs/CONFIG.md`.
pub fn render() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the declarations in `shared-schema/src/config.rs`; do not edit by hand. \
         After changing a key, regenerate with\n\
         `UPDATE_CONFIG_REFERENCE=1 cargo test --workspace --lib config_reference`.\n\n\
         Every service reads the same configuration, in layers: these defaults, then the TOML \
         file named by `PLATFORM_CONFIG` (if set), then the environment. A key `section.key` is \
         `[section] key = ...` in the file and `PLATFORM_SECTION__KEY` in the environment; the \
         contract's variables (`DATABASE_URL`, `KAFKA_BROKERS`, `EVENTS_TOPIC`, `LAKE_DIR`, \
         `LISTEN_ADDR`) set the top-level keys of their name. Durations are written like `250ms`, \
         `30s`, `5m`, `2h`, `7d`. Unknown keys are refused.\n\n",
    );
    for section in sections() {
        if section.name.is_empty() {
            out.push_str("## Top level\n\n");
        } else {
            out.push_str(&format!("## `[{}]`\n\n", section.name));
        }
        out.push_str(&paragraph(section.doc));
        for key in section.keys {
            let value = section.defaults.get(key.key).cloned().unwrap_or_default();
            // A nested section is rendered under its own heading, not as a key.
            if value.is_object() && key.ty.ends_with("Config") {
                continue;
            }
            let path = match section.name {
                "" => key.key.to_string(),
                name => format!("{name}.{}", key.key),
            };
            out.push_str(&format!(
                "### `{path}`\n\n{} · default {} · environment `{}`\n\n",
                type_name(key.ty),
                default_text(&value),
                environment_name(section.name, key.key)
            ));
            out.push_str(&paragraph(key.doc));
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

/// Doc comment lines joined into one paragraph (a blank doc line starts a new one).
fn paragraph(doc: &str) -> String {
    let mut out = String::new();
    let mut code = false;
    for line in doc.lines() {
        // Doc comments keep one leading space; a fenced block keeps its lines as written.
        let raw = line.strip_prefix(' ').unwrap_or(line);
        let line = line.trim();
        if line.starts_with("```") {
            if !(out.is_empty() || out.ends_with('\n')) {
                out.push('\n');
            }
            out.push_str(line);
            out.push('\n');
            code = !code;
        } else if code {
            out.push_str(raw);
            out.push('\n');
        } else if line.is_empty() {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            if !out.ends_with("\n\n") {
                out.push('\n');
            }
        } else {
            if !(out.is_empty() || out.ends_with('\n')) {
                out.push(' ');
            }
            out.push_str(line);
        }
    }
    if out.is_empty() {
        return out;
    }
    out.push_str("\n\n");
    out
}

/// What an operator writes, rather than the Rust type.
fn type_name(ty: &str) -> String {
    let ty: String = ty.chars().filter(|c| !c.is_whitespace()).collect();
    let (inner, optional) = match ty.strip_prefix("Option<").and_then(|t| t.strip_suffix('>')) {
        Some(inner) => (inner.to_string(), true),
        None => (ty, false),
    };
    let name = match inner.as_str() {
        "String" => "string",
        "PathBuf" => "path",
        "HumanDuration" => "duration",
        "usize" | "u32" | "u64" | "i64" => "integer",
        "f64" => "number",
        "bool" => "boolean",
        "Vec<String>" => "list of strings",
        "crate::kafka_access::ClientProperties" => "table of strings",
        "LogFormat" => "`text` or `json`",
        "Assignment" => "`group` or `leases`",
        "WebhookFormat" => "`platform` or `alertmanager`",
        other => other,
    };
    if optional {
        format!("optional {name}")
    } else {
        name.to_string()
    }
}

fn default_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "none".into(),
        other => format!("`{other}`"),
    }
}

fn environment_name(prefix: &str, key: &str) -> String {
    const CONTRACT: [&str; 5] = [
        "database_url",
        "kafka_brokers",
        "events_topic",
        "lake_dir",
        "listen_addr",
    ];
    if prefix.is_empty() && CONTRACT.contains(&key) {
        return key.to_uppercase();
    }
    if prefix == "kafka" && key == "properties" {
        return "PLATFORM_KAFKA__PROPERTIES__<NAME>".into();
    }
    if prefix.is_empty() {
        format!("PLATFORM_{}", key.to_uppercase())
    } else {
        format!("PLATFORM_{}__{}", prefix.to_uppercase(), key.to_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reference_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md");
        let rendered = render();
        if std::env::var_os("UPDATE_CONFIG_REFERENCE").is_some() {
            std::fs::write(path, &rendered).expect("write docs/CONFIG.md");
            return;
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == rendered,
            "docs/CONFIG.md differs from the declarations in shared-schema/src/config.rs: \
             regenerate it with `UPDATE_CONFIG_REFERENCE=1 cargo test --workspace --lib config_reference`"
        );
    }

    /// A section added to `PlatformConfig` but not to `sections()` would be missing from the
    /// reference without failing the test above.
    #[test]
    fn every_section_is_rendered() {
        let all = sections();
        let top = all
            .iter()
            .find(|s| s.name.is_empty())
            .expect("the top level");
        for key in top.keys.iter().filter(|k| k.ty.ends_with("Config")) {
            assert!(
                all.iter().any(|s| s.name == key.key),
                "section `{}` is not in config_reference::sections()",
                key.key
            );
        }
    }

    #[test]
    fn every_key_has_a_doc_and_a_default() {
        for section in sections() {
            for key in section.keys {
                let is_section = section.defaults.get(key.key).is_some_and(|v| v.is_object());
                assert!(
                    is_section || !key.doc.trim().is_empty(),
                    "{}.{} has no doc",
                    section.name,
                    key.key
                );
            }
        }
        let reference = render();
        assert!(reference.contains(
            "### `speed.batch_max_events`\n\ninteger · default `20000` · environment `PLATFORM_SPEED__BATCH_MAX_EVENTS`"
        ));
        assert!(reference.contains("### `kafka_brokers`"));
        assert!(reference.contains("environment `KAFKA_BROKERS`"));
        assert!(reference.contains("### `serving.webhook_url`\n\noptional string · default none"));
        assert!(
            !reference.contains("### `speed`\n"),
            "sections are not keys"
        );
    }

    #[test]
    fn types_read_as_an_operator_writes_them() {
        assert_eq!(type_name("Option < PathBuf >"), "optional path");
        assert_eq!(type_name("HumanDuration"), "duration");
        assert_eq!(type_name("Vec<String>"), "list of strings");
        assert_eq!(environment_name("", "lake_dir"), "LAKE_DIR");
        assert_eq!(environment_name("", "log_format"), "PLATFORM_LOG_FORMAT");
    }
}
