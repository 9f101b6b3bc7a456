//! Enrichment (issue 10): purchases joined with the buyer's profile version valid at their event
//! time, the profile table fed to both layers by the CDC publisher through logical decoding.
//!
//! - a profile changing mid-stream splits its user's purchases between the old and the new
//!   tier in both layers, and a window spanning the cutover merges the two sides exactly;
//! - an event sent after the change but older than it keeps the old tier;
//! - a profile change arriving after the events it applies to (by event time) leaves the speed
//!   layer's buckets as they were, and is reflected once the next batch run covers them;
//! - purchases without a profile, or without a user, are grouped under `unknown`;
//! - the publisher SIGKILLed mid-stream resumes from its slot: every change reaches both
//!   layers, none is applied twice.

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, Service, series_value, wait_until};
use serde_json::json;
use shared_schema::time::{
    MINUTE_MS, Millis, bucket_start, format_rfc3339, now_millis, to_datetime,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

const UNKNOWN: &str = "unknown";

/// A purchase and the tier each layer must attribute it to.
struct Purchase {
    id: String,
    user: Option<&'static str>,
    time: Millis,
    cents: i64,
    /// The tier the speed layer sees: the version known when the purchase was processed.
    speed: &'static str,
    /// The tier the batch layer sees: the version valid at its event time, in the final history.
    batch: &'static str,
}

async fn start(platform: &Platform) -> Result<Vec<Service>> {
    let services = vec![
        platform.spawn("speed-layer", &["run"])?,
        platform.spawn("batch-layer", &["land"])?,
        platform.spawn("serving-layer", &["run"])?,
    ];
    // Migrated (user_profiles exists) once the serving layer is ready.
    platform.wait_for_http().await?;
    Ok(services)
}

async fn set_profile(
    platform: &Platform,
    user: &str,
    tier: &str,
    updated_at: Millis,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO user_profiles (user_id, tier, signup_country, updated_at) VALUES ($1, $2, 'DE', $3)
         ON CONFLICT (user_id) DO UPDATE SET tier = EXCLUDED.tier, updated_at = EXCLUDED.updated_at",
    )
    .bind(user)
    .bind(tier)
    .bind(to_datetime(updated_at))
    .execute(&platform.pool)
    .await?;
    Ok(())
}

/// Waits until the speed layer and the lander both hold `versions` distinct changes.
async fn wait_changes_applied(platform: &Platform, versions: i64) -> Result<()> {
    let topic = platform.cdc_topic();
    let counts = || async {
        let speed: i64 = sqlx::query_scalar("SELECT count(*) FROM speed_profile_versions")
            .fetch_one(&platform.pool)
            .await
            .unwrap_or(-1);
        let landed: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(row_count), 0)::bigint FROM lake_files WHERE topic = $1",
        )
        .bind(&topic)
        .fetch_one(&platform.pool)
        .await
        .unwrap_or(-1);
        (speed, landed)
    };
    let waited = wait_until(
        Duration::from_secs(60),
        &format!("{versions} profile changes in both layers"),
        || async {
            let (speed, landed) = counts().await;
            speed >= versions && landed >= versions
        },
    )
    .await;
    if let Err(e) = waited {
        let reached = counts().await;
        return Err(e.context(format!("reached {reached:?}\n{}", platform.log_tails(30))));
    }
    Ok(())
}

async fn send_purchases(
    platform: &Platform,
    purchases: &[Purchase],
    ends: &mut HashMap<i32, i64>,
) -> Result<()> {
    for p in purchases {
        let mut event = json!({"event_id": p.id, "event_type": "purchase", "event_time": p.time,
                               "amount": p.cents as f64 / 100.0, "schema_version": 2});
        if let Some(user) = p.user {
            event["user_id"] = json!(user);
        }
        platform.send_tracked(0, &event, ends).await?;
    }
    Ok(())
}

/// Served revenue_by_tier over `[from, to)` with `step`: value per (point start, tier).
async fn served(
    platform: &Platform,
    from: Millis,
    to: Millis,
    step: &str,
) -> Result<BTreeMap<(Millis, String), (f64, String)>> {
    let url = format!(
        "/v1/metrics/revenue_by_tier?from={}&to={}&group_by=tier&step={step}",
        format_rfc3339(from),
        format_rfc3339(to)
    );
    let (status, body) = platform.get(&url).await?;
    ensure!(status == 200, "{url}: {status} {body}");
    let mut out = BTreeMap::new();
    for series in body["series"].as_array().context("series")? {
        let tier = series["group"]["tier"]
            .as_str()
            .context("tier")?
            .to_string();
        for point in series["points"].as_array().context("points")? {
            let t = shared_schema::time::parse_rfc3339(point["t"].as_str().context("t")?)
                .context("t")?;
            out.insert(
                (t, tier.clone()),
                (
                    point["value"].as_f64().context("value")?,
                    point["source"].as_str().context("source")?.to_string(),
                ),
            );
        }
    }
    Ok(out)
}

/// The truth per (point, tier): buckets before `cutover` as the batch layer attributes them,
/// the rest as the speed layer does; points of `step` ms.
fn expected(
    purchases: &[Purchase],
    cutover: Option<Millis>,
    from: Millis,
    step: Millis,
) -> BTreeMap<(Millis, String), f64> {
    let mut out: BTreeMap<(Millis, String), f64> = BTreeMap::new();
    for p in purchases {
        let bucket = bucket_start(p.time, MINUTE_MS);
        let tier = if cutover.is_some_and(|t| bucket < t) {
            p.batch
        } else {
            p.speed
        };
        // Points start at multiples of the step.
        let point = bucket_start(p.time, step).max(from);
        *out.entry((point, tier.to_string())).or_default() += p.cents as f64 / 100.0;
    }
    out
}

async fn check(
    platform: &Platform,
    step: &str,
    purchases: &[Purchase],
    cutover: Option<Millis>,
    (from, to): (Millis, Millis),
) -> Result<()> {
    for (step_text, step_ms) in [("1m", MINUTE_MS), ("20m", 20 * MINUTE_MS)] {
        let (from, to) = (
            bucket_start(from, step_ms),
            bucket_start(to - 1, step_ms) + step_ms,
        );
        let want = expected(purchases, cutover, from, step_ms);
        let got = served(platform, from, to, step_text).await?;
        let keys: BTreeSet<&(Millis, String)> = want.keys().chain(got.keys()).collect();
        let wrong: Vec<String> = keys
            .into_iter()
            .filter(|k| match (want.get(*k), got.get(*k)) {
                (Some(w), Some((g, _))) => (w - g).abs() > 1e-9,
                _ => true,
            })
            .map(|k| {
                format!(
                    "{} {}: served {:?}, truth {:?}",
                    format_rfc3339(k.0),
                    k.1,
                    got.get(k),
                    want.get(k)
                )
            })
            .collect();
        ensure!(
            wrong.is_empty(),
            "{step} (step {step_text}, T = {:?}): revenue_by_tier differs:\n{}",
            cutover.map(format_rfc3339),
            wrong.join("\n")
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purchases_see_the_profile_valid_at_their_event_time_in_both_layers() -> Result<()> {
    let mut platform = Platform::new("enrichment", 1).await?;
    let cdc_metrics = platform_tests::free_local_addr()?;
    platform
        .extra_env
        .push(("PLATFORM_CDC__METRICS_ADDR".into(), cdc_metrics.clone()));
    let mut publisher = platform.spawn("cdc-publisher", &["run"])?;
    let _services = start(&platform).await?;
    platform.wait_cdc_publisher_ready().await?;
    let base = bucket_start(now_millis(), MINUTE_MS) - 60 * MINUTE_MS;
    let at = |minutes: f64| base + (minutes * MINUTE_MS as f64) as Millis;

    // u1 is bronze and u2 silver from before the stream; u3 has no profile.
    set_profile(&platform, "u1", "bronze", at(-10.0)).await?;
    set_profile(&platform, "u2", "silver", at(-10.0)).await?;
    wait_changes_applied(&platform, 2).await?;

    let mut purchases = Vec::new();
    let purchase = |purchases: &mut Vec<Purchase>, user, minute: f64, cents, speed, batch| {
        purchases.push(Purchase {
            id: format!("p{}", purchases.len()),
            user,
            time: at(minute),
            cents,
            speed,
            batch,
        });
    };
    // Before u1's change at 5m.
    for m in 0..5 {
        purchase(
            &mut purchases,
            Some("u1"),
            m as f64 + 0.5,
            1_000,
            "bronze",
            "bronze",
        );
    }
    // u2 all along; its tier changes at 12m, but the change arrives after these purchases.
    for m in 0..20 {
        let batch = if m >= 12 { "platinum" } else { "silver" };
        purchase(
            &mut purchases,
            Some("u2"),
            m as f64 + 0.25,
            100 + m,
            "silver",
            batch,
        );
    }
    // No profile, and no user at all.
    for m in 0..3 {
        purchase(
            &mut purchases,
            Some("u3"),
            m as f64 + 0.75,
            10_000,
            UNKNOWN,
            UNKNOWN,
        );
    }
    purchase(&mut purchases, None, 3.5, 50_000, UNKNOWN, UNKNOWN);
    let first_wave = purchases.len();
    let mut ends = HashMap::new();
    send_purchases(&platform, &purchases, &mut ends).await?;
    platform.wait_caught_up("speed_offsets", &ends).await?;

    // u1 becomes gold from 5m: purchases after it are gold, one older one sent now is bronze.
    set_profile(&platform, "u1", "gold", at(5.0)).await?;
    wait_changes_applied(&platform, 3).await?;
    // The publisher counts what it published and reports the WAL its slot holds back.
    let text = platform.scrape(&cdc_metrics).await?;
    ensure!(
        series_value(&text, "lambda_cdc_published_total")?.is_some_and(|n| n >= 3.0)
            && series_value(&text, "lambda_cdc_slot_lag_bytes")?.is_some_and(|b| b >= 0.0)
            && text.contains("lambda_build_info{binary=\"cdc-publisher\""),
        "the publisher's /metrics:\n{text}"
    );
    for m in 5..10 {
        purchase(
            &mut purchases,
            Some("u1"),
            m as f64 + 0.5,
            2_000,
            "gold",
            "gold",
        );
    }
    purchase(&mut purchases, Some("u1"), 2.9, 3_000, "bronze", "bronze");
    // The lake is complete past the cutovers below once an event this late has landed.
    let late_view = json!({"event_id": "pv", "event_type": "page_view", "event_time": at(26.0)});
    platform.send_tracked(0, &late_view, &mut ends).await?;
    send_purchases(&platform, &purchases[first_wave..], &mut ends).await?;
    platform.wait_both_caught_up(&ends).await?;

    // The late change: u2 platinum from 12m, after its purchases there were processed.
    set_profile(&platform, "u2", "platinum", at(12.0)).await?;
    wait_changes_applied(&platform, 4).await?;
    let range = (base, at(20.0));
    check(&platform, "speed only", &purchases, None, range).await?;

    // A cutover in the middle of u1's gold purchases: both sides merge exactly; u2's late
    // change is still past T, where the speed layer keeps what it folded.
    platform.run_batch(at(7.0)).await?;
    check(&platform, "T at 7m", &purchases, Some(at(7.0)), range).await?;

    // The next run covers the late change: reflected.
    platform.run_batch(at(20.0)).await?;
    check(&platform, "T at 20m", &purchases, Some(at(20.0)), range).await?;
    let got = served(&platform, at(12.0), at(20.0), "1m").await?;
    let platinum: Vec<&(f64, String)> = got
        .iter()
        .filter(|((_, tier), _)| tier == "platinum")
        .map(|(_, v)| v)
        .collect();
    let want: f64 = (12..20).map(|m| (100 + m) as f64 / 100.0).sum();
    ensure!(
        platinum.len() == 8
            && platinum.iter().all(|(_, source)| source == "batch")
            && (platinum.iter().map(|(v, _)| v).sum::<f64>() - want).abs() < 1e-9,
        "the late change is served by the batch view: {got:?}"
    );

    // A change to buckets the promoted view already covers (u2 diamond from 15m): the next
    // run sees the changelog changed and recomputes them.
    set_profile(&platform, "u2", "diamond", at(15.0)).await?;
    wait_changes_applied(&platform, 5).await?;
    for p in purchases
        .iter_mut()
        .filter(|p| p.user == Some("u2") && p.time >= at(15.0))
    {
        p.batch = "diamond";
    }
    platform.run_batch(at(21.0)).await?;
    check(&platform, "T at 21m", &purchases, Some(at(21.0)), range).await?;

    // Filtering by a joined field.
    let (status, body) = platform
        .get(&format!(
            "/v1/metrics/revenue_by_tier?from={}&to={}&filter=tier:gold",
            format_rfc3339(base),
            format_rfc3339(at(20.0))
        ))
        .await?;
    ensure!(
        status == 200 && (platform_tests::first_series_total(&body) - 100.0).abs() < 1e-9,
        "gold revenue is u1's five purchases after 5m: {status} {body}"
    );
    publisher.kill9().await?;
    platform.drop_cdc_slot().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publisher_killed_mid_stream_resumes_without_loss_or_double_application() -> Result<()> {
    let platform = Platform::new("cdc_crash", 1).await?;
    let _services = start(&platform).await?;
    let base = bucket_start(now_millis(), MINUTE_MS) - 30 * MINUTE_MS;
    let mut publisher = platform.spawn_as("cdc-publisher-1", "cdc-publisher", &["run"])?;
    platform.wait_cdc_publisher_ready().await?;
    // Versions made: (user, updated_at, tier).
    let mut made: Vec<(String, Millis, String)> = Vec::new();
    let tiers = ["bronze", "silver", "gold"];
    for round in 0..90i64 {
        let user = format!("u{}", round % 6);
        let tier = tiers[(round % 3) as usize];
        let updated_at = base + round * 10_000;
        set_profile(&platform, &user, tier, updated_at).await?;
        made.push((user, updated_at, tier.to_string()));
        if round == 30 || round == 60 {
            // Killed while changes are being written, restarted a little later.
            publisher.kill9().await?;
        }
        if round == 45 || round == 75 {
            publisher =
                platform.spawn_as(&format!("cdc-publisher-{round}"), "cdc-publisher", &["run"])?;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    wait_changes_applied(&platform, made.len() as i64).await?;

    let want: BTreeSet<(String, Millis, String)> = made.into_iter().collect();
    let speed: Vec<(String, i64, Option<String>)> =
        sqlx::query_as("SELECT user_id, valid_from, tier FROM speed_profile_versions")
            .fetch_all(&platform.pool)
            .await?;
    let speed_set: BTreeSet<(String, Millis, String)> = speed
        .iter()
        .map(|(u, t, tier)| (u.clone(), *t, tier.clone().unwrap_or_default()))
        .collect();
    ensure!(
        speed.len() == want.len() && speed_set == want,
        "the speed layer holds every change once: {} rows for {} changes",
        speed.len(),
        want.len()
    );
    // Every change is in the lake: copies (a crash between the ack and the slot's advance)
    // share their LSN, and the join keeps one per LSN.
    let landed = speed_set.len();
    let lake_rows: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(row_count), 0)::bigint FROM lake_files WHERE topic = $1",
    )
    .bind(platform.cdc_topic())
    .fetch_one(&platform.pool)
    .await?;
    ensure!(
        lake_rows >= landed as i64,
        "{lake_rows} changelog rows landed for {landed} changes"
    );

    // Purchases after the last change carry each user's final tier in both layers.
    let mut ends = HashMap::new();
    let mut purchases = Vec::new();
    for u in 0..6 {
        let last = want
            .iter()
            .filter(|(user, _, _)| *user == format!("u{u}"))
            .max_by_key(|(_, t, _)| *t)
            .map(|(_, _, tier)| tier.clone())
            .context("a tier")?;
        let tier: &'static str = tiers.iter().copied().find(|t| *t == last).context("tier")?;
        purchases.push(Purchase {
            id: format!("c{u}"),
            user: Some(["u0", "u1", "u2", "u3", "u4", "u5"][u]),
            time: base + 20 * MINUTE_MS + u as i64 * 1000,
            cents: 100,
            speed: tier,
            batch: tier,
        });
    }
    send_purchases(&platform, &purchases, &mut ends).await?;
    let late_view =
        json!({"event_id": "pv", "event_type": "page_view", "event_time": base + 25 * MINUTE_MS});
    platform.send_tracked(0, &late_view, &mut ends).await?;
    platform.wait_both_caught_up(&ends).await?;
    let range = (base + 20 * MINUTE_MS, base + 40 * MINUTE_MS);
    check(&platform, "speed", &purchases, None, range).await?;
    platform.run_batch(base + 21 * MINUTE_MS).await?;
    check(
        &platform,
        "batch",
        &purchases,
        Some(base + 21 * MINUTE_MS),
        range,
    )
    .await?;
    publisher.kill9().await?;
    platform.drop_cdc_slot().await?;
    Ok(())
}
