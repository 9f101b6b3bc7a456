//! Addresses, database roles and the workspace's binaries.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// A loopback address with a port that was free a moment ago.
pub fn free_local_addr() -> Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

/// The read-only role migration 0011 creates; the test cluster admits it without a password.
pub const READER_ROLE: &str = "lambda_reader";

/// `url` with the user `user` and no password.
pub(crate) fn replace_user(url: &str, user: &str) -> Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .context("database URL has no scheme")?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    Ok(format!("{scheme}://{user}@{host}"))
}

/// `target/` of this workspace, found from the test executable (`target/debug/deps/...`).
pub fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .or_else(|| Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target")))
        .context("no target directory")
}

/// A workspace binary of the same profile as the running executable, built by
/// `cargo build --workspace --bins` (scripts/test.sh and scripts/bench.sh do that).
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Tests live in `<profile>/deps/`, binaries such as the benchmark in `<profile>/`.
    let profile_dir = exe
        .parent()
        .map(|dir| match dir.file_name() {
            Some(name) if name == "deps" => dir.parent().unwrap_or(dir),
            _ => dir,
        })
        .context("executable has no profile directory")?;
    let path = profile_dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (cargo build --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}
