//! Static checks of the compose stack's observability: Prometheus scrapes every exporter and
//! loads alerting rules over exported families, and Grafana provisions the dashboards, whose
//! PromQL and API queries are held against what the services export and serve. They run
//! without Docker (`tests/tests/grafana_panels.rs` runs the API queries against the platform).

use platform_tests::compose_file::*;
use platform_tests::grafana::{
    INFINITY, PRODUCT_ROW, panels_in_order, render_time_macro, row_panels,
};
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The compose Prometheus's `prometheus.yml`, as mounted.
fn prometheus_config(doc: &Value) -> Value {
    read_yaml(&bind_source(
        doc,
        "prometheus",
        "/etc/prometheus/prometheus.yml",
    ))
}

/// Where each service that exports metrics (`shared_io::observe::FAMILIES`) serves them.
const METRICS_ADDRESSES: [(&str, &str); 5] = [
    ("speed-layer", "PLATFORM_SPEED__METRICS_ADDR"),
    ("cdc-publisher", "PLATFORM_CDC__METRICS_ADDR"),
    ("lander", "PLATFORM_LANDER__METRICS_ADDR"),
    ("batch-scheduler", "PLATFORM_BATCH__METRICS_ADDR"),
    ("serving-layer", "LISTEN_ADDR"),
];

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
    let config = prometheus_config(&doc);
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
    let config = prometheus_config(&doc);
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
