//! Every binary answers `--version` with its name and the workspace version, as operators
//! check what runs before and after an upgrade (issue 19, item 4).

use platform_tests::bin_path;
use std::process::Command;

#[test]
fn every_binary_answers_version() {
    for binary in [
        "speed-layer",
        "batch-layer",
        "serving-layer",
        "cdc-publisher",
        "event-generator",
    ] {
        let output = Command::new(bin_path(binary).expect("the binary is built"))
            .arg("--version")
            .output()
            .expect("the binary runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{binary} --version failed: {text}");
        assert_eq!(
            text.trim(),
            format!("{binary} {}", env!("CARGO_PKG_VERSION")),
            "{binary} --version"
        );
    }
}
