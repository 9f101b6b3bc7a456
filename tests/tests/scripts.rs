//! The local scripts only ever use servers they started (issue 19, item 3): a port already
//! held by someone else's Kafka or Postgres is refused with a message naming the variables that
//! choose another, never reused. Runs `scripts/lib.sh` itself; needs no running stack.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

fn lib_sh(call: &str) -> (bool, String) {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib.sh");
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!("source '{}' && {call}", lib.display()))
        .output()
        .expect("bash runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn a_port_held_by_a_foreign_server_is_refused_not_reused() {
    // Someone else's server: a listener this test holds.
    let foreign = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = foreign.local_addr().expect("bound").port();
    for call in [
        format!("start_tansu scripts-test-foreign-broker {port} fresh"),
        format!("start_postgres scripts-test-foreign-pg {port}"),
        format!("refuse_foreign_port {port} 'the platform'"),
    ] {
        let (ok, text) = lib_sh(&call);
        assert!(!ok, "`{call}` used the foreign server on {port}:\n{text}");
        assert!(
            text.contains(&format!(
                "127.0.0.1:{port} is taken by a server these scripts did not start"
            )) && text.contains("DEMO_KAFKA_PORT")
                && text.contains("E2E_KAFKA_PORT"),
            "`{call}` does not say what to do:\n{text}"
        );
        // Nothing was started in its place.
        let pid_file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.local/scripts-test-foreign-broker/broker.pid");
        assert!(!pid_file.exists(), "a broker was started");
    }
    drop(foreign);
    let (ok, text) = lib_sh(&format!("refuse_foreign_port {port} 'the platform'"));
    assert!(ok, "a free port is accepted:\n{text}");
}
