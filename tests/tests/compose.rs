//! Static checks of the container setup: `docker-compose.yml`, `Dockerfile` and `.dockerignore`
//! at the workspace root. They run without Docker: the files are parsed and held against the
//! contract (shared/CONTRACT.md §2 configuration, §3 commands) and against each other.

use platform_tests::grafana::{
    INFINITY, PRODUCT_ROW, panels_in_order, render_time_macro, row_panels,
};
use serde_norway::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The contract's environment, which every platform service needs.
const PLATFORM_VARIABLES: [&str; 4] = ["DATABASE_URL", "KAFKA_BROKERS", "EVENTS_TOPIC", "LAKE_DIR"];
/// The services that read or write the lake.
const LAKE_SERVICES: [&str; 5] = [
    "lander",
    "batch-scheduler",
    "serving-layer",
    "ballista-scheduler",
    "ballista-executor",
];
/// The binaries the image must ship, with the package directory each one is built from.
const BINARIES: [(&str, &str); 4] = [
    ("speed-layer", "speed-layer"),
    ("batch-layer", "batch-layer"),
    ("serving-layer", "serving-layer"),
    ("event-generator", "tests"),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the platform-tests package lives one level below the workspace root")
        .to_path_buf()
}

fn read_root_file(name: &str) -> String {
    let path = workspace_root().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn compose() -> Value {
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

fn services(doc: &Value) -> &Mapping {
    doc.get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml has a `services:` mapping")
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    services(doc)
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

fn service_names(doc: &Value) -> BTreeSet<String> {
    services(doc)
        .keys()
        .map(|k| k.as_str().expect("service names are strings").to_string())
        .collect()
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// A service's `environment`, written either as a mapping or as a list of `KEY=VALUE`.
fn environment(doc: &Value, name: &str) -> BTreeMap<String, String> {
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
fn shell_words(text: &str) -> Vec<String> {
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

fn command(doc: &Value, name: &str) -> Vec<String> {
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
fn built_services(doc: &Value) -> Vec<String> {
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
fn mounts(doc: &Value, name: &str) -> Vec<(String, String)> {
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

fn is_named_volume(source: &str) -> bool {
    !source.is_empty() && !source.starts_with(['/', '.', '~', '$'])
}

/// The host part of `scheme://user:password@host:port/path`.
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    host_port.split(':').next().unwrap_or_default().to_string()
}

/// What Compose makes of `value` when no variable it names is set: `${X:-default}` and
/// `${X-default}` become `default`.
fn unset_value(value: &str) -> String {
    match value
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .and_then(|v| v.split_once('-'))
    {
        Some((_, default)) => default.trim_start_matches('-').to_string(),
        None => value.to_string(),
    }
}

fn depends_on(doc: &Value, name: &str) -> BTreeMap<String, Option<String>> {
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

#[test]
fn compose_runs_kafka_in_kraft_mode_with_postgres_and_every_layer() {
    let doc = compose();
    let names = service_names(&doc);
    for expected in [
        "kafka",
        "kafka-init",
        "postgres",
        "speed-layer",
        "lander",
        "batch-scheduler",
        "serving-layer",
        "generator",
    ] {
        assert!(
            names.contains(expected),
            "docker-compose.yml lacks service `{expected}`; it has {names:?}"
        );
    }

    // KRaft: one node that is both broker and controller, and no ZooKeeper anywhere.
    let kafka = environment(&doc, "kafka");
    let roles = kafka
        .get("KAFKA_PROCESS_ROLES")
        .expect("kafka: KAFKA_PROCESS_ROLES is not set (KRaft mode)");
    let roles: BTreeSet<&str> = roles.split(',').map(str::trim).collect();
    assert!(
        roles.contains("broker") && roles.contains("controller"),
        "kafka: KAFKA_PROCESS_ROLES must name broker and controller, got {roles:?}"
    );
    for key in [
        "KAFKA_NODE_ID",
        "KAFKA_CONTROLLER_QUORUM_VOTERS",
        "KAFKA_CONTROLLER_LISTENER_NAMES",
    ] {
        assert!(
            kafka.contains_key(key),
            "kafka: {key} is required in KRaft mode"
        );
    }
    assert_eq!(
        kafka
            .get("KAFKA_AUTO_CREATE_TOPICS_ENABLE")
            .map(String::as_str),
        Some("false"),
        "kafka: topic auto-creation must be disabled (kafka-init creates `events`)"
    );
    for name in &names {
        let svc = service(&doc, name);
        let image = svc.get("image").and_then(Value::as_str).unwrap_or_default();
        assert!(
            !name.to_lowercase().contains("zookeeper")
                && !image.to_lowercase().contains("zookeeper"),
            "service `{name}` (image `{image}`) is a ZooKeeper: the broker runs in KRaft mode"
        );
        for key in environment(&doc, name).keys() {
            assert!(
                !key.contains("ZOOKEEPER"),
                "service `{name}` sets {key}: the broker runs in KRaft mode"
            );
        }
    }
    assert!(
        service(&doc, "kafka").get("healthcheck").is_some(),
        "kafka needs a healthcheck for kafka-init to wait on"
    );

    // kafka-init creates the events topic once the broker is healthy.
    let init = command(&doc, "kafka-init").join(" ");
    assert!(
        init.contains("kafka-topics.sh")
            && init.contains("--create")
            && init.contains("--topic events"),
        "kafka-init must create the `events` topic with kafka-topics.sh, its command is `{init}`"
    );
    assert_eq!(
        depends_on(&doc, "kafka-init")
            .get("kafka")
            .cloned()
            .flatten()
            .as_deref(),
        Some("service_healthy"),
        "kafka-init must wait for kafka to be healthy"
    );
    assert!(
        service(&doc, "postgres").get("healthcheck").is_some(),
        "postgres needs a healthcheck"
    );
}

#[test]
fn platform_services_share_the_contract_configuration_and_commands() {
    let doc = compose();
    let names = service_names(&doc);
    let built = built_services(&doc);
    for expected in [
        "speed-layer",
        "lander",
        "batch-scheduler",
        "serving-layer",
        "generator",
    ] {
        assert!(
            built.iter().any(|b| b == expected),
            "service `{expected}` must be built from `.`; built ones: {built:?}"
        );
    }

    let images: BTreeSet<String> = built
        .iter()
        .map(|name| {
            let image = service(&doc, name).get("image").and_then(Value::as_str);
            image
                .unwrap_or_else(|| {
                    panic!("service `{name}` is built from `.` but names no `image`")
                })
                .to_string()
        })
        .collect();
    assert_eq!(
        images.len(),
        1,
        "every service built from `.` must share one image name, found {images:?}"
    );

    let kafka_advertised = environment(&doc, "kafka")
        .get("KAFKA_ADVERTISED_LISTENERS")
        .cloned()
        .unwrap_or_default();
    for name in &built {
        let env = environment(&doc, name);
        for key in PLATFORM_VARIABLES {
            let value = env
                .get(key)
                .unwrap_or_else(|| panic!("service `{name}` lacks {key} in its environment"));
            assert!(!value.is_empty(), "service `{name}`: {key} is empty");
        }
        let db_host = url_host(&env["DATABASE_URL"]);
        assert!(
            names.contains(&db_host),
            "service `{name}`: DATABASE_URL host `{db_host}` is not a compose service ({names:?})"
        );
        for broker in env["KAFKA_BROKERS"].split(',').map(str::trim) {
            let host = broker.split(':').next().unwrap_or_default();
            assert!(
                names.contains(host),
                "service `{name}`: KAFKA_BROKERS host `{host}` is not a compose service ({names:?})"
            );
            assert!(
                kafka_advertised.contains(broker),
                "service `{name}`: broker `{broker}` is not among kafka's KAFKA_ADVERTISED_LISTENERS `{kafka_advertised}`"
            );
        }
        let deps = depends_on(&doc, name);
        assert_eq!(
            deps.get(&db_host).cloned().flatten().as_deref(),
            Some("service_healthy"),
            "service `{name}` must wait for `{db_host}` to be healthy"
        );
        assert_eq!(
            deps.get("kafka-init").cloned().flatten().as_deref(),
            Some("service_completed_successfully"),
            "service `{name}` must wait for kafka-init to have created the topic"
        );
    }

    // CONTRACT §3: the commands, exactly.
    for (name, expected) in [
        ("speed-layer", vec!["speed-layer", "run"]),
        ("lander", vec!["batch-layer", "land"]),
        ("serving-layer", vec!["serving-layer", "run"]),
    ] {
        assert_eq!(
            command(&doc, name),
            expected,
            "service `{name}` must run the contract's command"
        );
    }
    let schedule = command(&doc, "batch-scheduler");
    assert!(
        schedule.len() == 4 && schedule[..3] == ["batch-layer", "schedule", "--cron"],
        "batch-scheduler must run `batch-layer schedule --cron \"<expr>\"`, runs {schedule:?}"
    );
    let fields = schedule[3].split_whitespace().count();
    assert!(
        fields == 5 || fields == 6,
        "batch-scheduler: `{}` is not a 5- or 6-field cron expression",
        schedule[3]
    );
    assert_eq!(
        command(&doc, "generator").first().map(String::as_str),
        Some("event-generator")
    );

    // The entry point: the serving layer listens on all interfaces and its port is published.
    let serving = environment(&doc, "serving-layer");
    let listen = serving
        .get("LISTEN_ADDR")
        .expect("serving-layer must set LISTEN_ADDR (the default binds 127.0.0.1 only)");
    assert!(
        listen.starts_with("0.0.0.0:"),
        "serving-layer: LISTEN_ADDR `{listen}` must bind 0.0.0.0 inside the container"
    );
    let port = listen.rsplit(':').next().unwrap_or_default();
    let published: Vec<String> = service(&doc, "serving-layer")
        .get("ports")
        .and_then(Value::as_sequence)
        .expect("serving-layer must publish its port")
        .iter()
        .map(|p| match p {
            Value::Mapping(long) => long.get("target").map(scalar_text).unwrap_or_default(),
            short => scalar_text(short)
                .rsplit(':')
                .next()
                .unwrap_or_default()
                .to_string(),
        })
        .collect();
    assert!(
        published.iter().any(|p| p == port),
        "serving-layer listens on {port} but publishes {published:?}"
    );
}

/// The compose profiles a service runs under (none: always).
fn profiles(doc: &Value, name: &str) -> Vec<String> {
    service(doc, name)
        .get("profiles")
        .and_then(Value::as_sequence)
        .map(|p| p.iter().map(scalar_text).collect())
        .unwrap_or_default()
}

#[test]
fn an_optional_ballista_cluster_serves_the_batch_runs() {
    let doc = compose();
    for name in ["ballista-scheduler", "ballista-executor"] {
        assert_eq!(
            profiles(&doc, name),
            ["ballista"],
            "service `{name}` must be optional, in the profile `ballista`"
        );
    }
    // Our subcommands, not Ballista's binaries, which lack the platform's functions.
    let scheduler = command(&doc, "ballista-scheduler");
    assert_eq!(scheduler[..2], ["batch-layer", "ballista-scheduler"]);
    let flag = |args: &[String], name: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| panic!("{args:?} lacks {name}"))
    };
    let bind = flag(&scheduler, "--bind");
    assert!(bind.starts_with("0.0.0.0:"), "the scheduler binds {bind}");
    let port = bind.rsplit(':').next().unwrap_or_default();
    let executor = command(&doc, "ballista-executor");
    assert_eq!(executor[..2], ["batch-layer", "ballista-executor"]);
    assert_eq!(
        flag(&executor, "--scheduler"),
        format!("ballista-scheduler:{port}"),
        "the executor must serve the scheduler service"
    );
    assert_eq!(
        flag(&executor, "--external-host"),
        "ballista-executor",
        "the batch run fetches results by the name the executor advertises"
    );

    // The batch runs stay local unless BATCH_ENGINE names that scheduler.
    let engine = environment(&doc, "batch-scheduler")
        .get("BATCH_ENGINE")
        .cloned()
        .expect("batch-scheduler must pass BATCH_ENGINE through");
    assert_eq!(engine, "${BATCH_ENGINE:-local}");
    let header = read_root_file("docker-compose.yml");
    assert!(
        header.contains(&format!(
            "BATCH_ENGINE=ballista://ballista-scheduler:{port} docker compose --profile ballista up"
        )),
        "docker-compose.yml must say how to start the cluster and point the batch runs at it"
    );
}

#[test]
fn lake_services_share_one_declared_volume() {
    let doc = compose();
    let declared: BTreeSet<String> = match doc.get("volumes") {
        Some(Value::Mapping(map)) => map.keys().map(scalar_text).collect(),
        None | Some(Value::Null) => BTreeSet::new(),
        Some(other) => panic!("top-level `volumes` is not a mapping: {other:?}"),
    };

    let mut lake: BTreeSet<(String, String)> = BTreeSet::new();
    for name in LAKE_SERVICES {
        let env = environment(&doc, name);
        let lake_dir = env
            .get("LAKE_DIR")
            .map(|v| unset_value(v))
            .unwrap_or_else(|| panic!("service `{name}` lacks LAKE_DIR"));
        let mount = mounts(&doc, name)
            .into_iter()
            .find(|(_, target)| target.trim_end_matches('/') == lake_dir.trim_end_matches('/'))
            .unwrap_or_else(|| {
                panic!("service `{name}` mounts nothing at its LAKE_DIR `{lake_dir}`")
            });
        assert!(
            is_named_volume(&mount.0),
            "service `{name}`: the lake must be a named volume, not `{}`",
            mount.0
        );
        lake.insert((mount.0, lake_dir.trim_end_matches('/').to_string()));
    }
    assert_eq!(
        lake.len(),
        1,
        "{LAKE_SERVICES:?} must mount the same volume at the same LAKE_DIR, found (volume, path) {lake:?}"
    );

    for name in service_names(&doc) {
        for (source, target) in mounts(&doc, &name) {
            if is_named_volume(&source) {
                assert!(
                    declared.contains(&source),
                    "service `{name}` mounts volume `{source}` at {target}, but top-level `volumes:` declares only {declared:?}"
                );
            }
        }
    }
}

/// Dockerfile instructions, continuation lines joined and comments dropped.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let text = read_root_file("Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let full = std::mem::take(&mut current);
        if let Some((keyword, rest)) = full.trim().split_once(char::is_whitespace) {
            instructions.push((keyword.to_uppercase(), rest.trim().to_string()));
        }
    }
    instructions
}

/// Whether a COPY of the build context (not from another stage) brings `dir` into the builder.
fn copied_into_builder(instructions: &[(String, String)], dir: &str) -> bool {
    instructions.iter().any(|(k, rest)| {
        let words: Vec<&str> = rest
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        k == "COPY"
            && !rest.contains("--from")
            && words.len() >= 2
            && words[..words.len() - 1].iter().any(|src| {
                let src = src.trim_start_matches("./").trim_end_matches('/');
                src == dir || src == "."
            })
    })
}

#[test]
fn dockerfile_builds_the_four_binaries_with_the_migrations() {
    let instructions = dockerfile_instructions();
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, r)| r)
        .collect();
    assert!(
        froms.len() >= 2,
        "the Dockerfile must be multi-stage (a builder and a runtime), has FROM {froms:?}"
    );
    assert!(
        froms[0].starts_with("rust:"),
        "the builder must start from the official rust image, not `{}`",
        froms[0]
    );

    let dockerignore = read_root_file(".dockerignore");
    let ignored: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches("/").trim_end_matches('/'))
        .collect();
    for pattern in ["target", ".local", "data", ".git"] {
        assert!(
            ignored.contains(&pattern),
            ".dockerignore must exclude {pattern}, it has {ignored:?}"
        );
    }
    // migrations/ (sqlx::migrate!) and config/ (the default metric definitions, include_str!)
    // are embedded at compile time, so the builder must have both.
    for embedded in ["migrations", "config"] {
        assert!(
            !ignored.contains(&embedded),
            ".dockerignore must not exclude {embedded}/ (embedded at compile time)"
        );
        assert!(
            copied_into_builder(&instructions, embedded),
            "the Dockerfile must COPY {embedded}/ into the builder"
        );
    }

    // cargo reads the whole workspace before building anything: every member must be there.
    let manifest: toml::Table = read_root_file("Cargo.toml")
        .parse()
        .expect("Cargo.toml is TOML");
    let members: Vec<&str> = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace.members")
        .iter()
        .filter_map(toml::Value::as_str)
        .collect();
    assert!(members.len() >= 5, "members: {members:?}");
    for member in members {
        assert!(
            copied_into_builder(&instructions, member),
            "the Dockerfile must COPY the workspace member {member}/ into the builder"
        );
        assert!(
            !ignored.contains(&member),
            ".dockerignore must not exclude the workspace member {member}/"
        );
    }

    let build = instructions
        .iter()
        .find(|(k, rest)| k == "RUN" && rest.contains("cargo build"))
        .map(|(_, rest)| rest)
        .expect("the Dockerfile never runs `cargo build`");
    assert!(
        build.contains("--release"),
        "the image must ship release builds: `{build}`"
    );

    for (binary, package_dir) in BINARIES {
        assert!(
            build.contains("--bins") || build.contains(&format!("--bin {binary}")),
            "`{build}` does not build `{binary}`"
        );
        let shipped = instructions.iter().any(|(k, rest)| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            k == "COPY"
                && rest.contains("--from=")
                && words
                    .last()
                    .is_some_and(|dest| dest.starts_with("/usr/local/bin"))
                && words.iter().any(|w| w.rsplit('/').next() == Some(binary))
        });
        assert!(
            shipped,
            "the runtime stage must COPY `{binary}` from the builder into /usr/local/bin"
        );

        // The binary has to exist in the workspace under that name.
        let dir = workspace_root().join(package_dir);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("reading {package_dir}/Cargo.toml: {e}"));
        let named_in_manifest = manifest.contains(&format!("name = \"{binary}\""));
        let exists = dir.join(format!("src/bin/{binary}.rs")).is_file()
            || dir.join(format!("src/bin/{binary}/main.rs")).is_file()
            || (named_in_manifest
                && (dir.join("src/main.rs").is_file() || manifest.contains("[[bin]]")));
        assert!(
            exists,
            "no binary `{binary}` in {package_dir}/ (src/main.rs, src/bin/{binary}.rs or a [[bin]] entry)"
        );
    }
}

/// Where each service that exports metrics (`shared_io::observe::FAMILIES`) serves them.
const METRICS_ADDRESSES: [(&str, &str); 5] = [
    ("speed-layer", "PLATFORM_SPEED__METRICS_ADDR"),
    ("cdc-publisher", "PLATFORM_CDC__METRICS_ADDR"),
    ("lander", "PLATFORM_LANDER__METRICS_ADDR"),
    ("batch-scheduler", "PLATFORM_BATCH__METRICS_ADDR"),
    ("serving-layer", "LISTEN_ADDR"),
];

/// The bind mount of `service` at `target`: its source, as a path in the workspace, which must
/// exist.
fn bind_source(doc: &Value, service: &str, target: &str) -> PathBuf {
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

fn read_yaml(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The `lambda_*` names a PromQL expression refers to.
/// The family a series name in PromQL belongs to: its own, or a histogram's `_bucket`, `_sum`
/// or `_count`.
fn exported_family(name: &str) -> Option<&'static shared_io::observe::Family> {
    use shared_io::observe::{FAMILIES, Kind};
    FAMILIES.iter().find(|f| {
        name == f.name
            || (f.kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name == format!("{}{suffix}", f.name)))
    })
}

fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("lambda_"))
        .map(str::to_string)
        .collect()
}

/// Every data source the compose Grafana provisions (`provisioning/datasources/*.yml`).
fn provisioned_datasources(doc: &Value) -> Vec<Value> {
    let provisioning = bind_source(doc, "grafana", "/etc/grafana/provisioning");
    yaml_files(&provisioning.join("datasources"))
        .iter()
        .flat_map(|file| {
            read_yaml(file)
                .get("datasources")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// The uids of the data sources of plugin `kind`.
fn datasource_uids(datasources: &[Value], kind: &str) -> BTreeSet<String> {
    datasources
        .iter()
        .filter(|d| d.get("type").and_then(Value::as_str) == Some(kind))
        .filter_map(|d| d.get("uid").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The dashboard JSON files the compose Grafana's providers load.
fn provisioned_dashboards(doc: &Value) -> Vec<PathBuf> {
    let provisioning = bind_source(doc, "grafana", "/etc/grafana/provisioning");
    let providers = yaml_files(&provisioning.join("dashboards"));
    assert!(
        !providers.is_empty(),
        "no dashboard provider is provisioned"
    );
    let mut dashboards = Vec::new();
    for provider in providers.iter().flat_map(|file| {
        read_yaml(file)
            .get("providers")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default()
    }) {
        let path = provider
            .get("options")
            .and_then(|o| o.get("path"))
            .and_then(Value::as_str)
            .expect("a dashboard provider has options.path");
        let dir = bind_source(doc, "grafana", path.trim_end_matches('/'));
        for entry in std::fs::read_dir(&dir).expect("the dashboards directory") {
            let file = entry.expect("a directory entry").path();
            if file.extension().is_some_and(|e| e == "json") {
                dashboards.push(file);
            }
        }
    }
    assert!(
        !dashboards.is_empty(),
        "the provider finds no dashboard JSON"
    );
    dashboards.sort();
    dashboards
}

/// Every PromQL expression of a Grafana dashboard, with the datasource uid of its target.
fn dashboard_targets(dashboard: &serde_json::Value) -> Vec<(String, Option<String>)> {
    let mut targets = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    // Annotations (promotions, the cutover) are queries too.
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let expr = annotation["expr"].as_str().unwrap_or_default().to_string();
        let uid = annotation["datasource"]["uid"].as_str().map(str::to_string);
        targets.push((expr, uid));
    }
    while let Some(panel) = panels.pop() {
        // Collapsed rows hold their panels.
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default().to_string();
            let uid = target["datasource"]["uid"]
                .as_str()
                .or_else(|| panel["datasource"]["uid"].as_str())
                .map(str::to_string);
            targets.push((expr, uid));
        }
    }
    targets
}

#[test]
fn prometheus_scrapes_every_exporter_and_grafana_provisions_the_dashboard() {
    use shared_io::observe::FAMILIES;
    let doc = compose();
    let names = service_names(&doc);
    for expected in ["prometheus", "grafana"] {
        assert!(
            names.contains(expected),
            "docker-compose.yml lacks service `{expected}`"
        );
    }

    // Every exporting service listens on all interfaces, and Prometheus scrapes it there.
    let config = read_yaml(&bind_source(
        &doc,
        "prometheus",
        "/etc/prometheus/prometheus.yml",
    ));
    let scraped: BTreeSet<String> = config
        .get("scrape_configs")
        .and_then(Value::as_sequence)
        .expect("prometheus.yml has `scrape_configs`")
        .iter()
        .flat_map(|job| {
            job.get("static_configs")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
        })
        .flat_map(|c| {
            c.get("targets")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
        })
        .map(scalar_text)
        .collect();
    let exporters: BTreeSet<&str> = FAMILIES
        .iter()
        .flat_map(|f| f.exported_by.iter().copied())
        .collect();
    for exporter in &exporters {
        let (_, key) = METRICS_ADDRESSES
            .iter()
            .find(|(service, _)| service == exporter)
            .unwrap_or_else(|| panic!("no metrics address known for `{exporter}`"));
        let addr = environment(&doc, exporter)
            .get(*key)
            .cloned()
            .unwrap_or_else(|| panic!("service `{exporter}` does not set {key}"));
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        assert_eq!(
            host, "0.0.0.0",
            "service `{exporter}`: {key} `{addr}` must listen on all interfaces"
        );
        let target = format!("{exporter}:{port}");
        assert!(
            scraped.contains(&target),
            "prometheus.yml does not scrape {target}; it scrapes {scraped:?}"
        );
    }

    // Grafana: the provisioned datasources, and the dashboards the provider loads.
    let datasources = provisioned_datasources(&doc);
    let uids = datasource_uids(&datasources, "prometheus");
    assert!(
        !uids.is_empty(),
        "no Prometheus datasource with a uid is provisioned"
    );
    // The serving layer's API panels (JSON, not PromQL) are checked by
    // `grafana_shows_the_metrics_through_the_serving_layers_api`.
    let api_uids = datasource_uids(&datasources, INFINITY);
    let dashboards = provisioned_dashboards(&doc);

    // Each dashboard parses and refers only to families the services export, through a
    // provisioned datasource; together they show every family.
    let mut shown = BTreeSet::new();
    for file in &dashboards {
        let text = std::fs::read_to_string(file).expect("a readable dashboard");
        let dashboard: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", file.display()));
        let targets = dashboard_targets(&dashboard);
        assert!(!targets.is_empty(), "{}: no queries", file.display());
        for (expr, uid) in targets {
            if uid.as_ref().is_some_and(|u| api_uids.contains(u)) {
                continue;
            }
            assert!(
                uid.as_ref().is_some_and(|u| uids.contains(u)),
                "{}: `{expr}` uses datasource {uid:?}, provisioned are {uids:?}",
                file.display()
            );
            let used = metric_names(&expr);
            // Or Prometheus's standard process families, which every service exports beside
            // its own (checked by the observability scenario).
            let standard = expr.contains("process_");
            assert!(
                !used.is_empty() || standard,
                "{}: `{expr}` shows no platform metric",
                file.display()
            );
            for name in used {
                let family = exported_family(&name).unwrap_or_else(|| {
                    panic!(
                        "{}: `{expr}` refers to {name}, which no service exports",
                        file.display()
                    )
                });
                shown.insert(family.name);
            }
        }
    }
    let missing: Vec<&str> = FAMILIES
        .iter()
        .map(|f| f.name)
        .filter(|n| !shown.contains(n))
        .collect();
    assert!(missing.is_empty(), "no dashboard panel shows {missing:?}");

    // Promotions and rollbacks are marked on every panel, and so is the cutover T (issue 19).
    for file in &dashboards {
        let text = std::fs::read_to_string(file).expect("a readable dashboard");
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let annotated: Vec<&str> = dashboard["annotations"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["enable"] == true)
            .filter_map(|a| a["expr"].as_str())
            .collect();
        for family in [
            "lambda_promoted_timestamp_seconds",
            "lambda_cutover_timestamp_seconds",
        ] {
            assert!(
                annotated
                    .iter()
                    .any(|expr| metric_names(expr).iter().any(|n| n == family)),
                "{}: no annotation follows {family}: {annotated:?}",
                file.display()
            );
        }
    }
}

/// Metrics of the default catalogue the product panels must show over time.
const PRODUCT_METRICS: [&str; 3] = ["purchases", "revenue", "active_users"];
/// The backend parsers of Infinity (JSONata, jq): server-side, so alerting and caching work too.
const BACKEND_PARSERS: [&str; 2] = ["backend", "jq-backend"];

/// `x.y.z`, digits only: one release, not a range or `latest`.
fn is_pinned_version(version: &str) -> bool {
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// The GET routes of the serving layer: the `.route("...", get(...))` literals of its router.
fn served_get_routes() -> Vec<String> {
    let source = read_root_file("serving-layer/src/router.rs");
    let mut routes = Vec::new();
    for piece in source.split(".route(").skip(1) {
        // A path held in a constant is not a literal; none of those serves the API.
        let Some((path, handlers)) = piece
            .trim_start()
            .strip_prefix('"')
            .and_then(|rest| rest.split_once('"'))
        else {
            continue;
        };
        // The method routers, up to the `)` that closes `.route(`.
        let mut depth = 1;
        let end = handlers
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(handlers.len(), |(i, _)| i);
        if handlers[..end].contains("get(") {
            routes.push(path.to_string());
        }
    }
    routes
}

/// The `{param}` values of `path` when it matches the route `template`.
fn route_match(template: &str, path: &str) -> Option<BTreeMap<String, String>> {
    let (wanted, given): (Vec<&str>, Vec<&str>) =
        (template.split('/').collect(), path.split('/').collect());
    if wanted.len() != given.len() {
        return None;
    }
    let mut params = BTreeMap::new();
    for (w, g) in wanted.iter().zip(&given) {
        match w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
            Some(name) if !g.is_empty() => {
                params.insert(name.to_string(), g.to_string());
            }
            None if w == g => {}
            _ => return None,
        }
    }
    Some(params)
}

/// The query parameters `GET /v1/metrics/{name}` documents (its `utoipa::path` attribute).
fn metric_query_parameters() -> BTreeSet<String> {
    read_root_file("serving-layer/src/metric_query/mod.rs")
        .lines()
        .map(str::trim)
        .filter(|line| line.contains(", Query,"))
        .filter_map(|line| line.strip_prefix("(\"")?.split_once('"'))
        .map(|(name, _)| name.to_string())
        .collect()
}

#[test]
fn grafana_shows_the_metrics_through_the_serving_layers_api() -> anyhow::Result<()> {
    use anyhow::{Context, ensure};
    use shared_schema::time::{HumanDuration, parse_rfc3339};

    let doc = compose();

    // The plugin is installed by Grafana itself, at one pinned release.
    let grafana = environment(&doc, "grafana");
    ensure!(
        grafana
            .get("GF_PLUGINS_PREINSTALL_DISABLED")
            .map(String::as_str)
            != Some("true"),
        "grafana: GF_PLUGINS_PREINSTALL_DISABLED=true skips every preinstalled plugin"
    );
    let pins: Vec<String> = ["GF_PLUGINS_PREINSTALL_SYNC", "GF_PLUGINS_PREINSTALL"]
        .iter()
        .filter_map(|key| grafana.get(*key))
        .flat_map(|list| list.split(','))
        .filter_map(|entry| entry.trim().strip_prefix(INFINITY)?.strip_prefix('@'))
        // `id@version@url`: the version is the second part.
        .map(|rest| rest.split('@').next().unwrap_or_default().to_string())
        .collect();
    ensure!(
        pins.len() == 1,
        "grafana must preinstall {INFINITY}@<version> once (GF_PLUGINS_PREINSTALL_SYNC), found {pins:?} in {grafana:?}"
    );
    ensure!(
        is_pinned_version(&pins[0]),
        "grafana: {INFINITY}@{} is not one pinned release (x.y.z)",
        pins[0]
    );

    // One Infinity data source, pointed at the serving layer's address inside compose.
    let datasources = provisioned_datasources(&doc);
    let api: Vec<&Value> = datasources
        .iter()
        .filter(|d| d.get("type").and_then(Value::as_str) == Some(INFINITY))
        .collect();
    ensure!(
        api.len() == 1,
        "one {INFINITY} data source must be provisioned, found {api:?}"
    );
    let api = api[0];
    let uid = api
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .context("the Infinity data source needs a fixed uid, which the panels name")?;
    let base = api
        .get("url")
        .and_then(Value::as_str)
        .context("the Infinity data source needs `url`, the serving layer's")?
        .trim_end_matches('/');
    let authority = base
        .strip_prefix("http://")
        .with_context(|| format!("`{base}`: the serving layer speaks plain HTTP inside compose"))?;
    let (host, port) = authority
        .split_once(':')
        .with_context(|| format!("`{base}` names no port"))?;
    let serving = service_names(&doc)
        .into_iter()
        .find(|name| {
            service(&doc, name).get("command").is_some()
                && command(&doc, name) == ["serving-layer", "run"]
        })
        .context("no compose service runs `serving-layer run`")?;
    ensure!(
        host == serving,
        "the Infinity data source reads `{host}`, the serving layer is the service `{serving}`"
    );
    let listen = environment(&doc, &serving)
        .get("LISTEN_ADDR")
        .cloned()
        .context("serving-layer sets no LISTEN_ADDR")?;
    ensure!(
        listen.rsplit(':').next() == Some(port),
        "the Infinity data source reads port {port}, the serving layer listens on `{listen}`"
    );
    if let Some(allowed) = api
        .get("jsonData")
        .and_then(|j| j.get("allowedHosts"))
        .and_then(Value::as_sequence)
    {
        ensure!(
            allowed
                .iter()
                .filter_map(Value::as_str)
                .any(|a| base.starts_with(a.trim_end_matches('/'))),
            "the Infinity data source's allowedHosts {allowed:?} refuse its own url `{base}`"
        );
    }
    ensure!(
        depends_on(&doc, "grafana").contains_key(&serving),
        "grafana must start after `{serving}`, which its panels read"
    );

    // The product row: its panels query that data source only.
    let mut rows = Vec::new();
    for file in provisioned_dashboards(&doc) {
        let text = std::fs::read_to_string(&file)?;
        let dashboard: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
        if row_panels(&dashboard, PRODUCT_ROW).is_some() {
            rows.push((file, dashboard));
        }
    }
    ensure!(
        rows.len() == 1,
        "one provisioned dashboard must have the row `{PRODUCT_ROW}`, found {}",
        rows.len()
    );
    let (file, dashboard) = &rows[0];
    let file = file.display();
    let ids: Vec<i64> = panels_in_order(dashboard)
        .iter()
        .filter_map(|p| p["id"].as_i64())
        .collect();
    ensure!(
        ids.iter().collect::<BTreeSet<_>>().len() == ids.len()
            && ids.len() == panels_in_order(dashboard).len(),
        "{file}: every panel needs its own id (annotations and links name them): {ids:?}"
    );
    let product = row_panels(dashboard, PRODUCT_ROW).unwrap_or_default();
    ensure!(
        !product.is_empty(),
        "{file}: the row `{PRODUCT_ROW}` has no panels"
    );

    let routes = served_get_routes();
    ensure!(
        routes.iter().any(|r| r == "/v1/metrics/{name}"),
        "the serving layer's router no longer reads as expected: GET routes {routes:?}"
    );
    let parameters = metric_query_parameters();
    ensure!(
        parameters.contains("from") && parameters.contains("to"),
        "the metric query's documented parameters no longer read as expected: {parameters:?}"
    );
    let catalog = shared_schema::MetricCatalog::default();
    // A range boundary with milliseconds, as Grafana's usually are: the API must read it exactly.
    let sample = parse_rfc3339("2026-12-02T10:00:00.250Z").context("a sample instant")?;

    let mut charted = BTreeSet::new();
    let (mut split_at_cutover, mut shows_cutover) = (false, false);
    for panel in &product {
        let title = panel["title"].as_str().unwrap_or_default();
        ensure!(
            panel["datasource"]["uid"] == uid,
            "{file}: panel `{title}` uses data source {}, not the serving layer's `{uid}`",
            panel["datasource"]
        );
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        ensure!(!targets.is_empty(), "{file}: panel `{title}` has no query");
        for target in targets {
            let target_uid = target["datasource"]["uid"].as_str().unwrap_or(uid);
            ensure!(
                target_uid == uid,
                "{file}: a query of `{title}` uses data source `{target_uid}`"
            );
            ensure!(
                target["source"] == "url" && target["type"] == "json",
                "{file}: `{title}` must query JSON from a URL"
            );
            ensure!(
                BACKEND_PARSERS.iter().any(|p| target["parser"] == *p),
                "{file}: `{title}` must parse with a backend parser {BACKEND_PARSERS:?}, not {}",
                target["parser"]
            );
            let selector = target["root_selector"].as_str().unwrap_or_default();
            ensure!(
                !selector.trim().is_empty(),
                "{file}: `{title}` selects nothing of the answer"
            );

            // The URL: a GET route the serving layer serves, for a metric the catalogue has.
            let url = target["url"].as_str().unwrap_or_default();
            let relative = url.strip_prefix(base).unwrap_or(url);
            let (path, query) = relative.split_once('?').unwrap_or((relative, ""));
            ensure!(
                path.starts_with('/'),
                "{file}: `{title}` queries `{url}`, not a path of `{base}`"
            );
            let matched: Vec<(&String, BTreeMap<String, String>)> = routes
                .iter()
                .filter_map(|r| route_match(r, path).map(|params| (r, params)))
                .collect();
            ensure!(
                !matched.is_empty(),
                "{file}: `{title}` queries `{path}`, which the serving layer does not serve (GET {routes:?})"
            );
            let name = matched
                .iter()
                .find(|(r, _)| r.as_str() == "/v1/metrics/{name}")
                .and_then(|(_, params)| params.get("name"))
                .with_context(|| {
                    format!("{file}: `{title}` queries `{path}`, not a metric's merged answer")
                })?;
            let (_, metric) = catalog.get(name).with_context(|| {
                format!("{file}: `{title}` asks for `{name}`, which the default catalogue lacks")
            })?;

            let mut params = BTreeMap::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                ensure!(
                    parameters.contains(key),
                    "{file}: `{title}` passes `{key}`, which GET /v1/metrics/{{name}} does not take ({parameters:?})"
                );
                ensure!(
                    params.insert(key, value).is_none(),
                    "{file}: `{title}` passes `{key}` twice"
                );
            }
            for (key, start) in [("from", true), ("to", false)] {
                let value = params
                    .get(key)
                    .with_context(|| format!("{file}: `{title}` passes no `{key}`"))?;
                let (is_start, text) = render_time_macro(value, sample).with_context(|| {
                    format!("{file}: `{title}`: `{key}={value}` is not the dashboard's time range")
                })?;
                ensure!(
                    is_start == start,
                    "{file}: `{title}`: `{key}={value}` is the other end of the range"
                );
                ensure!(
                    parse_rfc3339(&text) == Some(sample),
                    "{file}: `{title}`: `{key}={value}` becomes `{text}`, which the API refuses (RFC 3339 with an offset)"
                );
            }
            let dimensions: Vec<&str> = metric.dimensions.iter().map(|d| d.name()).collect();
            let group_by = params.get("group_by").copied();
            for (key, dimension) in [
                ("group_by", group_by),
                (
                    "filter",
                    params
                        .get("filter")
                        .map(|f| f.split(':').next().unwrap_or_default()),
                ),
            ] {
                if let Some(dimension) = dimension {
                    ensure!(
                        dimensions.contains(&dimension),
                        "{file}: `{title}`: `{key}` names `{dimension}`, `{name}` has {dimensions:?}"
                    );
                }
            }
            for key in ["step", "window"] {
                if let Some(value) = params.get(key) {
                    let duration = HumanDuration::parse(value)
                        .map_err(|e| anyhow::anyhow!("{file}: `{title}`: `{key}={value}`: {e}"))?;
                    ensure!(
                        duration.millis() % metric.bucket.millis() == 0,
                        "{file}: `{title}`: `{key}={value}` is not a multiple of `{name}`'s bucket {}",
                        metric.bucket
                    );
                }
            }
            // The series' groups are read under the dimension they are grouped by.
            for read in selector.split(".group.").skip(1) {
                let read: String = read
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                ensure!(
                    group_by == Some(read.as_str()),
                    "{file}: `{title}` reads `.group.{read}` of answers grouped by {group_by:?}"
                );
            }

            if panel["type"] == "timeseries" {
                let columns = target["columns"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                ensure!(
                    target["format"] == "timeseries"
                        && columns.iter().any(|c| c["type"] == "timestamp"),
                    "{file}: `{title}` must give a time series: format `timeseries` and a `timestamp` column"
                );
                charted.insert(name.clone());
                split_at_cutover |= selector.contains(".source");
            }
            shows_cutover |= selector.contains(".cutover");
        }
    }
    let missing: Vec<&str> = PRODUCT_METRICS
        .iter()
        .copied()
        .filter(|m| !charted.contains(*m))
        .collect();
    ensure!(
        missing.is_empty(),
        "{file}: no time series of `{PRODUCT_ROW}` shows {missing:?}"
    );
    ensure!(
        split_at_cutover,
        "{file}: no time series of `{PRODUCT_ROW}` splits its points by `source`, the side of T"
    );
    ensure!(
        shows_cutover,
        "{file}: no panel of `{PRODUCT_ROW}` shows the `cutover` the answers carry"
    );

    // The promotion and cutover annotations reach the product panels: a filter must not
    // leave them out.
    let product_ids: BTreeSet<i64> = product.iter().filter_map(|p| p["id"].as_i64()).collect();
    for family in [
        "lambda_promoted_timestamp_seconds",
        "lambda_cutover_timestamp_seconds",
    ] {
        let annotations: Vec<&serde_json::Value> = dashboard["annotations"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["enable"] == true)
            .filter(|a| {
                a["expr"]
                    .as_str()
                    .is_some_and(|e| metric_names(e).iter().any(|n| n == family))
            })
            .collect();
        ensure!(
            !annotations.is_empty(),
            "{file}: no annotation follows {family}"
        );
        for annotation in annotations {
            let filter = &annotation["filter"];
            if filter.is_null() {
                continue;
            }
            let listed: BTreeSet<i64> = filter["ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_i64)
                .collect();
            let shown: BTreeSet<i64> = if filter["exclude"] == true {
                product_ids.difference(&listed).copied().collect()
            } else {
                product_ids.intersection(&listed).copied().collect()
            };
            ensure!(
                shown == product_ids,
                "{file}: the annotation `{}` is filtered off the product panels {:?}",
                annotation["name"],
                product_ids.difference(&shown).collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}

/// What the shipped alerting rules must watch (issue 19, item 5), each by a family it reads.
const ALERTED: [&str; 6] = [
    "lambda_consumer_lag_messages",
    "lambda_speed_watermark_delay_seconds",
    "lambda_divergence_ratio",
    "lambda_speed_late_events_total",
    "lambda_consumer_quarantined_total",
    "lambda_batch_run_duration_seconds",
];

#[test]
fn prometheus_loads_alerting_rules_over_exported_families() {
    let doc = compose();
    let config = read_yaml(&bind_source(
        &doc,
        "prometheus",
        "/etc/prometheus/prometheus.yml",
    ));
    let files: Vec<String> = config
        .get("rule_files")
        .and_then(Value::as_sequence)
        .expect("prometheus.yml has `rule_files`")
        .iter()
        .map(scalar_text)
        .collect();
    assert!(!files.is_empty(), "prometheus.yml loads no rule file");
    let mut watched = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    for file in files {
        // Mounted into the container from the repository, like the scrape configuration.
        let rules = read_yaml(&bind_source(&doc, "prometheus", &file));
        let groups = rules
            .get("groups")
            .and_then(Value::as_sequence)
            .unwrap_or_else(|| panic!("{file}: no `groups`"));
        for rule in groups.iter().flat_map(|g| {
            g.get("rules")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default()
        }) {
            let name = rule
                .get("alert")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{file}: a rule without `alert`: {rule:?}"));
            assert!(
                alerts.insert(name.to_string()),
                "{file}: alert {name} twice"
            );
            assert!(
                rule.get("labels").and_then(|l| l.get("severity")).is_some(),
                "{file}: {name} has no labels.severity"
            );
            assert!(
                rule.get("annotations")
                    .and_then(|a| a.get("summary"))
                    .is_some(),
                "{file}: {name} has no annotations.summary"
            );
            let expr = rule
                .get("expr")
                .map(scalar_text)
                .unwrap_or_else(|| panic!("{file}: {name} has no `expr`"));
            let used = metric_names(&expr);
            assert!(!used.is_empty(), "{file}: {name} reads no platform metric");
            for metric in used {
                let family = exported_family(&metric).unwrap_or_else(|| {
                    panic!("{file}: {name} reads {metric}, which no service exports")
                });
                watched.insert(family.name);
            }
        }
    }
    let unwatched: Vec<&str> = ALERTED
        .iter()
        .copied()
        .filter(|f| !watched.contains(f))
        .collect();
    assert!(unwatched.is_empty(), "no alerting rule reads {unwatched:?}");

    // And Prometheus's own checker parses every expression and template.
    let Some(promtool) = std::env::var_os("E2E_PROMTOOL") else {
        panic!("E2E_PROMTOOL is unset: run through scripts/test.sh, which unpacks promtool");
    };
    let rules = bind_source(&doc, "prometheus", "/etc/prometheus/rules.yml");
    let checked = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool runs");
    assert!(
        checked.status.success(),
        "promtool check rules {}: {}{}",
        rules.display(),
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// Prometheus's checker parses every PromQL query of the provisioned dashboards, given to it as
/// recording rules: a query Prometheus refuses draws an empty panel with an error in Grafana.
#[test]
fn promtool_parses_every_dashboard_query() {
    let Some(promtool) = std::env::var_os("E2E_PROMTOOL") else {
        panic!("E2E_PROMTOOL is unset: run through scripts/test.sh, which unpacks promtool");
    };
    let doc = compose();
    let prometheus = datasource_uids(&provisioned_datasources(&doc), "prometheus");
    for file in provisioned_dashboards(&doc) {
        let text = std::fs::read_to_string(&file).expect("a readable dashboard");
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let rules: Vec<serde_json::Value> = dashboard_targets(&dashboard)
            .into_iter()
            .filter(|(_, uid)| uid.as_ref().is_some_and(|u| prometheus.contains(u)))
            .enumerate()
            .map(|(i, (expr, _))| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr}))
            .collect();
        assert!(!rules.is_empty(), "{}: no PromQL", file.display());
        // YAML reads JSON.
        let groups = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
        let checked_file = std::env::temp_dir().join(format!(
            "dashboard-queries-{}-{}.yml",
            std::process::id(),
            file.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("dashboard")
        ));
        std::fs::write(&checked_file, groups.to_string()).expect("a temporary rules file");
        let checked = std::process::Command::new(&promtool)
            .args(["check", "rules"])
            .arg(&checked_file)
            .output()
            .expect("promtool runs");
        let _ = std::fs::remove_file(&checked_file);
        assert!(
            checked.status.success(),
            "{}: promtool refuses a query: {}{}",
            file.display(),
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
}

/// The bucket the `s3` profile creates in MinIO.
const MINIO_BUCKET: &str = "lake";

#[test]
fn minio_offers_an_s3_lake() {
    let doc = compose();
    for name in ["minio", "minio-init"] {
        assert_eq!(
            profiles(&doc, name),
            ["s3"],
            "`{name}` runs only with `--profile s3`, so the default stack stays on the volume"
        );
    }
    let minio = environment(&doc, "minio");
    assert!(
        service(&doc, "minio").get("healthcheck").is_some(),
        "minio needs a healthcheck for minio-init to wait on"
    );
    assert_eq!(
        depends_on(&doc, "minio-init")
            .get("minio")
            .cloned()
            .flatten()
            .as_deref(),
        Some("service_healthy"),
        "minio-init must wait for minio to be healthy"
    );
    let init = command(&doc, "minio-init").join(" ");
    assert!(
        init.contains(&format!("mc mb --ignore-existing minio/{MINIO_BUCKET}")),
        "minio-init must create the bucket `{MINIO_BUCKET}`, its command is `{init}`"
    );
    assert!(
        read_root_file("docker-compose.yml").contains(&format!("LAKE_DIR=s3://{MINIO_BUCKET}/")),
        "docker-compose.yml must document how to point LAKE_DIR at the bucket"
    );

    for name in LAKE_SERVICES {
        let env = environment(&doc, name);
        let endpoint = env
            .get("AWS_ENDPOINT")
            .unwrap_or_else(|| panic!("service `{name}` lacks AWS_ENDPOINT"));
        assert_eq!(
            url_host(endpoint),
            "minio",
            "service `{name}`: AWS_ENDPOINT `{endpoint}`"
        );
        assert!(
            endpoint.starts_with("https://")
                || env.get("AWS_ALLOW_HTTP").map(String::as_str) == Some("true"),
            "service `{name}`: a plain-HTTP endpoint needs AWS_ALLOW_HTTP=true"
        );
        assert_eq!(
            env.get("AWS_ACCESS_KEY_ID"),
            minio.get("MINIO_ROOT_USER"),
            "service `{name}`: the access key is MinIO's user"
        );
        assert_eq!(
            env.get("AWS_SECRET_ACCESS_KEY"),
            minio.get("MINIO_ROOT_PASSWORD"),
            "service `{name}`: the secret is MinIO's password"
        );
        assert!(
            env.contains_key("AWS_REGION"),
            "service `{name}` lacks AWS_REGION"
        );
        assert!(
            env["LAKE_DIR"].starts_with("${LAKE_DIR"),
            "service `{name}`: LAKE_DIR must be settable from the shell, is `{}`",
            env["LAKE_DIR"]
        );
        // Optional, so the default stack starts without the `s3` profile.
        let wait = service(&doc, name)
            .get("depends_on")
            .and_then(|d| d.get("minio-init"))
            .unwrap_or_else(|| panic!("service `{name}` must wait for minio-init"));
        assert_eq!(
            wait.get("condition").and_then(Value::as_str),
            Some("service_completed_successfully"),
            "service `{name}` must wait for the bucket"
        );
        assert_eq!(
            wait.get("required").and_then(Value::as_bool),
            Some(false),
            "service `{name}`: minio-init must be optional"
        );
    }
}

/// Issue 8: requests read through the read-only role of migration 0011, which the compose
/// Postgres creates with a password when it initialises, so that the serving layer can log in.
#[test]
fn the_serving_layer_reads_through_the_read_only_role() {
    let doc = compose();
    let serving = environment(&doc, "serving-layer");
    let reader_url = serving
        .get("PLATFORM_SERVING__DATABASE_URL")
        .expect("serving-layer must set PLATFORM_SERVING__DATABASE_URL (serving.database_url)");
    let credentials = reader_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(credentials, _)| credentials)
        .unwrap_or_default();
    let (user, password) = credentials
        .split_once(':')
        .unwrap_or_else(|| panic!("`{reader_url}` names no user and password"));
    assert_eq!(
        user, "lambda_reader",
        "serving.database_url: `{reader_url}`"
    );
    let database = |url: &str| url.rsplit('/').next().unwrap_or_default().to_string();
    assert_eq!(
        (url_host(reader_url), database(reader_url)),
        (
            url_host(&serving["DATABASE_URL"]),
            database(&serving["DATABASE_URL"])
        ),
        "the reader must reach the database DATABASE_URL migrates"
    );

    let script = bind_source(
        &doc,
        "postgres",
        "/docker-entrypoint-initdb.d/reader-role.sql",
    );
    let script = std::fs::read_to_string(&script).expect("reading the role script");
    let migration = read_root_file("migrations/0011_reader_role.sql");
    let attributes =
        "CREATE ROLE lambda_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT";
    assert!(
        migration.contains(attributes),
        "migration 0011 no longer creates `{attributes}`: keep the compose script in step"
    );
    assert!(
        script.contains(&format!("{attributes} PASSWORD '{password}'")),
        "the compose Postgres must create `{attributes}` with the password serving uses:\n{script}"
    );
}
