//! `docker-compose.yml` and the files it mounts, parsed for the static compose tests
//! (`tests/tests/compose.rs`, `tests/tests/compose_observability.rs`).

use serde_norway::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the platform-tests package lives one level below the workspace root")
        .to_path_buf()
}

pub fn read_root_file(name: &str) -> String {
    let path = workspace_root().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub fn compose() -> Value {
    let text = read_root_file("docker-compose.yml");
    let mut doc: Value =
        serde_norway::from_str(&text).expect("docker-compose.yml is not valid YAML");
    // Compose honours YAML merge keys (`<<: *anchor`); so do these checks.
    doc.apply_merge()
        .expect("docker-compose.yml: a YAML merge key (`<<`) could not be applied");
    assert!(
        doc.get("version").is_none(),
        "docker-compose.yml follows the Compose specification: no top-level `version:`"
    );
    doc
}

pub fn services(doc: &Value) -> &Mapping {
    doc.get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml has a `services:` mapping")
}

pub fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    services(doc)
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

pub fn service_names(doc: &Value) -> BTreeSet<String> {
    services(doc)
        .keys()
        .map(|k| k.as_str().expect("service names are strings").to_string())
        .collect()
}

pub fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// A service's `environment`, written either as a mapping or as a list of `KEY=VALUE`.
pub fn environment(doc: &Value, name: &str) -> BTreeMap<String, String> {
    match service(doc, name).get("environment") {
        None => BTreeMap::new(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(k, v)| {
                let key = k.as_str().unwrap_or_else(|| {
                    panic!("service `{name}`: an environment key is not a string")
                });
                (key.to_string(), scalar_text(v))
            })
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let entry = item.as_str().unwrap_or_else(|| {
                    panic!("service `{name}`: environment entry {item:?} is not a string")
                });
                match entry.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (entry.to_string(), String::new()),
                }
            })
            .collect(),
        Some(other) => {
            panic!("service `{name}`: `environment` is neither a mapping nor a list: {other:?}")
        }
    }
}

/// Splits a command string the way a shell would for the simple cases Compose files use:
/// whitespace-separated words, with single or double quotes grouping.
pub fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quote in command `{text}`");
    if in_word {
        words.push(word);
    }
    words
}

pub fn command(doc: &Value, name: &str) -> Vec<String> {
    match service(doc, name).get("command") {
        Some(Value::String(text)) => shell_words(text),
        Some(Value::Sequence(items)) => items.iter().map(scalar_text).collect(),
        Some(other) => {
            panic!("service `{name}`: `command` is neither a string nor a list: {other:?}")
        }
        None => panic!("service `{name}` has no `command`"),
    }
}

/// The services built from the workspace root, i.e. running the platform image.
pub fn built_services(doc: &Value) -> Vec<String> {
    services(doc)
        .iter()
        .filter(|(_, svc)| {
            let context = match svc.get("build") {
                Some(Value::String(context)) => Some(context.as_str()),
                Some(Value::Mapping(build)) => build.get("context").and_then(Value::as_str),
                _ => None,
            };
            matches!(context, Some(".") | Some("./"))
        })
        .map(|(k, _)| k.as_str().expect("service names are strings").to_string())
        .collect()
}

/// `(source, target)` of each volume mount of a service, short or long syntax.
pub fn mounts(doc: &Value, name: &str) -> Vec<(String, String)> {
    let Some(volumes) = service(doc, name).get("volumes") else {
        return Vec::new();
    };
    volumes
        .as_sequence()
        .unwrap_or_else(|| panic!("service `{name}`: `volumes` is not a list"))
        .iter()
        .map(|mount| match mount {
            Value::String(short) => {
                let mut parts = short.splitn(3, ':');
                let source = parts.next().unwrap_or_default().to_string();
                let target = parts.next().unwrap_or_else(|| {
                    panic!("service `{name}`: volume `{short}` has no target (anonymous volume)")
                });
                (source, target.to_string())
            }
            Value::Mapping(long) => {
                let field = |key: &str| {
                    long.get(key)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                (field("source"), field("target"))
            }
            other => panic!("service `{name}`: unreadable volume entry {other:?}"),
        })
        .collect()
}

pub fn is_named_volume(source: &str) -> bool {
    !source.is_empty() && !source.starts_with(['/', '.', '~', '$'])
}

/// The host part of `scheme://user:password@host:port/path`.
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    host_port.split(':').next().unwrap_or_default().to_string()
}

/// What Compose makes of `value` when no variable it names is set: `${X:-default}` and
/// `${X-default}` become `default`.
pub fn unset_value(value: &str) -> String {
    match value
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .and_then(|v| v.split_once('-'))
    {
        Some((_, default)) => default.trim_start_matches('-').to_string(),
        None => value.to_string(),
    }
}

pub fn depends_on(doc: &Value, name: &str) -> BTreeMap<String, Option<String>> {
    match service(doc, name).get("depends_on") {
        None => BTreeMap::new(),
        Some(Value::Sequence(names)) => names.iter().map(|n| (scalar_text(n), None)).collect(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(k, v)| {
                (
                    scalar_text(k),
                    v.get("condition")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                )
            })
            .collect(),
        Some(other) => panic!("service `{name}`: unreadable `depends_on` {other:?}"),
    }
}

/// The compose profiles a service runs under (none: always).
pub fn profiles(doc: &Value, name: &str) -> Vec<String> {
    service(doc, name)
        .get("profiles")
        .and_then(Value::as_sequence)
        .map(|p| p.iter().map(scalar_text).collect())
        .unwrap_or_default()
}

/// The bind mount of `service` at `target`: its source, as a path in the workspace, which must
/// exist.
pub fn bind_source(doc: &Value, service: &str, target: &str) -> PathBuf {
    let (source, _) = mounts(doc, service)
        .into_iter()
        .find(|(_, t)| t.trim_end_matches('/') == target)
        .unwrap_or_else(|| panic!("service `{service}` mounts nothing at {target}"));
    assert!(
        source.starts_with("./"),
        "service `{service}`: {target} must be a file of the repository, mounted from `./...`, not `{source}`"
    );
    let path = workspace_root().join(source.trim_start_matches("./"));
    assert!(
        path.exists(),
        "service `{service}` mounts {}, which does not exist",
        path.display()
    );
    path
}

pub fn read_yaml(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    files
}
