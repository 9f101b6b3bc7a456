//! Static checks of the container setup: `docker-compose.yml`, `Dockerfile` and `.dockerignore`
//! at the workspace root. They run without Docker: the files are parsed and held against the
//! contract (shared/CONTRACT.md §2 configuration, §3 commands) and against each other.

use platform_tests::compose_file::*;
use serde_norway::Value;
use std::collections::BTreeSet;

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
