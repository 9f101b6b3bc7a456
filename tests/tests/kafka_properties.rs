//! Client properties from configuration reach the broker (issue 19): `[kafka.properties]` is
//! passed to every Kafka client. The services bootstrap through a TCP relay in front of the
//! broker, which reads the client id from the header of each connection's first request, as
//! the broker does: every client of the speed layer and the lander must carry the configured
//! `client.id`, none librdkafka's default. A property the platform sets itself is refused at
//! start, naming the key to use instead. (The same services' log files are checked to hold no
//! terminal colour codes, issue 19 item 9.)

use anyhow::{Context, Result, ensure};
use platform_tests::{Platform, wait_until};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The client id of a Kafka request frame (without its length prefix): api key, api version,
/// correlation id, then the client id as a nullable int16-length string (request header v1 and
/// v2 alike).
fn client_id(frame: &[u8]) -> Option<String> {
    let len = i16::from_be_bytes(frame.get(8..10)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    String::from_utf8(frame.get(10..10 + len)?.to_vec()).ok()
}

/// Relays every connection to `upstream`, recording the client id of its first request.
async fn relay(listener: TcpListener, upstream: String, seen: Arc<Mutex<Vec<String>>>) {
    while let Ok((mut client, _)) = listener.accept().await {
        let (upstream, seen) = (upstream.clone(), seen.clone());
        tokio::spawn(async move {
            let mut size = [0u8; 4];
            client.read_exact(&mut size).await?;
            let mut frame = vec![0u8; u32::from_be_bytes(size) as usize];
            client.read_exact(&mut frame).await?;
            if let Some(id) = client_id(&frame) {
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(id);
            }
            let mut broker = TcpStream::connect(&upstream).await?;
            broker.write_all(&size).await?;
            broker.write_all(&frame).await?;
            tokio::io::copy_bidirectional(&mut client, &mut broker).await?;
            anyhow::Ok(())
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_properties_reach_the_broker_and_reserved_ones_are_refused() -> Result<()> {
    let mut platform = Platform::new("kafka_props", 2).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let relayed = listener.local_addr()?.to_string();
    let upstream = platform
        .brokers
        .split(',')
        .next()
        .context("no broker")?
        .to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(relay(listener, upstream, seen.clone()));

    let wanted = format!("lambda-{}", platform.topic);
    platform
        .extra_env
        .push(("KAFKA_BROKERS".into(), relayed.clone()));
    platform.extra_env.push((
        "PLATFORM_KAFKA__PROPERTIES__CLIENT_ID".into(),
        wanted.clone(),
    ));
    let mut speed = platform.spawn("speed-layer", &["run"])?;
    let mut lander = platform.spawn("batch-layer", &["land"])?;
    wait_until(
        Duration::from_secs(60),
        "the speed layer and the lander to own partitions",
        || async { speed.got_partitions() && lander.log().contains("assigned") },
    )
    .await?;
    speed.assert_running()?;
    lander.assert_running()?;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ensure!(
        !seen.is_empty() && seen.iter().all(|id| *id == wanted),
        "client ids the broker saw: {seen:?}, wanted only {wanted}"
    );
    println!("{} connections, each with client id {wanted}", seen.len());
    // Their logs go to files here, as under a supervisor: plain text, no terminal colours.
    for log in [speed.log(), lander.log()] {
        ensure!(
            !log.is_empty() && !log.contains('\u{1b}'),
            "a log file holds colour codes: {log}"
        );
    }

    // The consumer group is the platform's to name: refused before anything connects.
    platform.extra_env.push((
        "PLATFORM_KAFKA__PROPERTIES__GROUP_ID".into(),
        "someone-elses".into(),
    ));
    let (ok, output) = platform.run("speed-layer", &["run"]).await?;
    ensure!(!ok, "started with a reserved property: {output}");
    ensure!(
        output.contains("kafka.properties.group.id") && output.contains("speed.group_id"),
        "{output}"
    );
    Ok(())
}

#[test]
fn the_client_id_is_read_from_a_request_header() {
    // ApiVersions v3, correlation id 1, client id "abc", then a tagged-fields byte.
    let frame = [0, 18, 0, 3, 0, 0, 0, 1, 0, 3, b'a', b'b', b'c', 0];
    assert_eq!(client_id(&frame).as_deref(), Some("abc"));
    assert_eq!(client_id(&frame[..11]), None);
}
