//! A running service process and what its log says.

use crate::*;
use anyhow::{Result, bail};
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::Child;

/// A running service process.
pub struct Service {
    pub(crate) child: Child,
    pub log_path: PathBuf,
    pub(crate) log_start: u64,
}

impl Service {
    /// SIGKILL: no shutdown path runs.
    pub async fn kill9(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit on its own: its status, or `None` while it
    /// still runs.
    pub async fn exited_within(
        &mut self,
        limit: Duration,
    ) -> Result<Option<std::process::ExitStatus>> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => Ok(None),
        }
    }

    /// The partitions a consumer group (or its leases) assigned this process (a speed layer or lander), one
    /// list per assignment in its log, oldest first: `[0, 1]`, or `[]` for an empty one.
    pub fn assignments(&self) -> Vec<String> {
        self.log().lines().filter_map(assigned_partitions).collect()
    }

    /// The partitions of the latest assignment, or an empty string before the first.
    pub fn last_assignment(&self) -> String {
        self.assignments().pop().unwrap_or_default()
    }

    /// The group assigned this process some partition at some point.
    pub fn got_partitions(&self) -> bool {
        self.assignments()
            .iter()
            .any(|partitions| partitions != "[]")
    }

    /// Everything this process (not an earlier one under the same label) wrote so far.
    pub fn log(&self) -> String {
        let text = std::fs::read(&self.log_path).unwrap_or_default();
        let own = text.get(self.log_start as usize..).unwrap_or_default();
        String::from_utf8_lossy(own).into_owned()
    }

    /// Waits up to `limit` for the group to assign this process some partition.
    pub async fn wait_for_partitions(&self, limit: Duration) -> Result<()> {
        wait_until(limit, "a partition assigned by the group", || async {
            self.got_partitions()
        })
        .await
    }

    /// Fails if the process already exited, with its log.
    pub fn assert_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("service exited with {status}:\n{}", self.log());
        }
        Ok(())
    }
}

/// The partition list of an "assigned by the group" (or, with `speed.assignment = "leases"`,
/// "assigned by lease") log line.
fn assigned_partitions(line: &str) -> Option<String> {
    if !line.contains("assigned by the group") && !line.contains("assigned by lease") {
        return None;
    }
    let plain = without_colours(line);
    let (_, partitions) = plain.split_once("partitions=")?;
    Some(partitions.trim().to_string())
}

/// `line` without terminal colours (ESC '[' ... 'm'), as the services write them to a log.
pub fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            let _ = chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_assignments_from_coloured_and_plain_log_lines() {
        let coloured = "\u{1b}[2m2026-11-22T13:49:33Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m shared_io::kafka: \
                        assigned by the group \u{1b}[3mtopic\u{1b}[0m\u{1b}[2m=\u{1b}[0mevents \
                        \u{1b}[3mpartitions\u{1b}[0m\u{1b}[2m=\u{1b}[0m[]";
        assert_eq!(assigned_partitions(coloured).as_deref(), Some("[]"));
        let plain = "INFO shared_io::kafka: assigned by the group topic=events partitions=[2, 3]";
        assert_eq!(assigned_partitions(plain).as_deref(), Some("[2, 3]"));
        assert_eq!(
            assigned_partitions("INFO revoked by the group partitions=[2, 3]"),
            None
        );
    }
}
