//! Static checks of the Kubernetes manifests in `deploy/kubernetes` (issue 19): no cluster runs
//! here, so they are validated against Kubernetes's schemas (`kubernetes-validate`, strict, from
//! PyPI) and held against the platform: every file is in the kustomization, every service runs
//! a command its binary has, probes reach `/healthz` and `/readyz` on the port the service
//! serves them on, singletons roll out by recreation, the Service reaches the serving pods, and
//! every variable set is one the platform reads.

use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .join("deploy/kubernetes")
}

/// Every document of every manifest, with its file name.
fn documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for file in manifest_files() {
        let text = std::fs::read_to_string(dir().join(&file)).expect("a manifest");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            if !value.is_null() {
                docs.push((file.clone(), value));
            }
        }
    }
    docs
}

fn manifest_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    files
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn deployments(docs: &[(String, Value)]) -> BTreeMap<String, Value> {
    docs.iter()
        .filter(|(_, d)| kind(d) == "Deployment")
        .map(|(_, d)| (name(d).to_string(), d.clone()))
        .collect()
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The ConfigMap's variables.
fn config(docs: &[(String, Value)]) -> BTreeMap<String, String> {
    let map = docs
        .iter()
        .find(|(_, d)| kind(d) == "ConfigMap")
        .map(|(_, d)| d["data"].clone())
        .expect("a ConfigMap");
    map.as_mapping()
        .expect("its data")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap_or_default().to_string(),
                v.as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_manifest_is_applied_and_valid_against_the_kubernetes_schemas() {
    let kustomization: Value = serde_norway::from_str(
        &std::fs::read_to_string(dir().join("kustomization.yaml")).expect("kustomization.yaml"),
    )
    .expect("valid YAML");
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let files: BTreeSet<String> = manifest_files().into_iter().collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml lists exactly the manifests"
    );

    let Some(validate) = std::env::var_os("E2E_KUBERNETES_VALIDATE") else {
        panic!(
            "E2E_KUBERNETES_VALIDATE is unset: run through scripts/test.sh, which installs kubernetes-validate"
        );
    };
    // The oldest Kubernetes release still commonly run, strict: unknown fields are errors.
    let checked = std::process::Command::new(validate)
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .args(files.iter().map(|f| dir().join(f)))
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        checked.status.success(),
        "kubernetes-validate: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn services_run_their_commands_with_probes_on_the_ports_they_serve() {
    let docs = documents();
    let config = config(&docs);
    let deployments = deployments(&docs);
    // Each service: its command, the variable that says where it serves /healthz and /readyz,
    // and whether more than one may run.
    let expected = [
        (
            "speed-layer",
            "speed-layer run",
            "PLATFORM_SPEED__METRICS_ADDR",
            false,
        ),
        (
            "lander",
            "batch-layer land",
            "PLATFORM_LANDER__METRICS_ADDR",
            true,
        ),
        (
            "batch-scheduler",
            "batch-layer schedule",
            "PLATFORM_BATCH__METRICS_ADDR",
            true,
        ),
        (
            "cdc-publisher",
            "cdc-publisher run",
            "PLATFORM_CDC__METRICS_ADDR",
            true,
        ),
        ("serving-layer", "serving-layer run", "LISTEN_ADDR", false),
    ];
    assert_eq!(
        deployments.keys().collect::<BTreeSet<_>>(),
        expected
            .iter()
            .map(|e| &e.0)
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
            .iter()
            .collect(),
        "a Deployment per service"
    );
    for (service, command, addr_variable, singleton) in expected {
        let deployment = &deployments[service];
        let container = container(deployment);
        let run = strings(&container["command"]).join(" ");
        assert!(run.starts_with(command), "{service} runs `{run}`");
        let addr = &config[addr_variable];
        assert!(
            addr.starts_with("0.0.0.0:"),
            "{service} serves on {addr}: not reachable from the kubelet"
        );
        let port: u64 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port");
        let ports = container["ports"].as_sequence().expect("ports");
        let named: BTreeMap<&str, u64> = ports
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default(),
                    p["containerPort"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{service} {probe}");
            let probe_port = get["port"].as_str().and_then(|n| named.get(n)).copied();
            assert_eq!(probe_port, Some(port), "{service} {probe} reaches {addr}");
        }
        let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(port.to_string().as_str())
        );
        let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
        let strategy = deployment["spec"]["strategy"]["type"].as_str();
        if singleton {
            assert!(
                replicas == 1 && strategy == Some("Recreate"),
                "{service} runs alone and is recreated, never rolled beside its old pod"
            );
        } else {
            assert!(
                replicas >= 2,
                "{service} runs as several replicas: {replicas}"
            );
        }
        let env_from: Vec<&str> = container["envFrom"]
            .as_sequence()
            .expect("envFrom")
            .iter()
            .filter_map(|e| {
                e["configMapRef"]["name"]
                    .as_str()
                    .or(e["secretRef"]["name"].as_str())
            })
            .collect();
        assert_eq!(
            env_from,
            ["lambda-platform-config", "lambda-platform-secrets"],
            "{service}"
        );
    }

    // The Service reaches the serving pods on their HTTP port.
    let service = docs
        .iter()
        .find(|(_, d)| kind(d) == "Service")
        .map(|(_, d)| d)
        .expect("a Service");
    let pods = &deployments["serving-layer"]["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"]
        .as_mapping()
        .expect("a selector")
    {
        assert_eq!(
            &pods[key.as_str().unwrap_or_default()],
            value,
            "the Service selects the serving pods"
        );
    }
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_str(),
        Some("http")
    );
}

#[test]
fn every_variable_set_is_one_the_platform_reads() {
    let docs = documents();
    let reference =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIG.md"))
            .expect("docs/CONFIG.md");
    let mut variables: BTreeSet<String> = config(&docs).into_keys().collect();
    for (_, doc) in &docs {
        if kind(doc) == "Secret" {
            variables.extend(
                doc["stringData"]
                    .as_mapping()
                    .expect("stringData")
                    .keys()
                    .filter_map(|k| k.as_str().map(str::to_string)),
            );
        }
        if kind(doc) == "Deployment" {
            for env in container(doc)["env"].as_sequence().into_iter().flatten() {
                variables.insert(env["name"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    // Read by the AWS SDK conventions the object store follows, or by the logger.
    let outside = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "RUST_LOG",
    ];
    let unknown: Vec<&String> = variables
        .iter()
        .filter(|v| !outside.contains(&v.as_str()) && !reference.contains(&format!("`{v}`")))
        .collect();
    assert!(
        unknown.is_empty(),
        "variables docs/CONFIG.md does not name: {unknown:?}"
    );
}
