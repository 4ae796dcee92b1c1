//! The gateway's resident memory, from `/proc/<pid>/status`, sampled while the load runs.

use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;

/// The gateway's memory target.
pub const TARGET_KIB: u64 = 64 * 1024;
const EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Serialize)]
pub struct Rss {
    pub pid: u32,
    /// The highest `VmRSS` seen while the load ran.
    pub peak_kib: u64,
    /// `VmRSS` once the sale was over.
    pub after_kib: u64,
    pub target_kib: u64,
}

impl Rss {
    pub fn within_target(&self) -> bool {
        self.peak_kib <= self.target_kib
    }
}

/// A field of `/proc/<pid>/status` in KiB, e.g. `VmRSS`.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The pid of the one running `seckill-gateway`, if there is exactly one.
pub fn find_gateway() -> Option<u32> {
    match find_processes("seckill-gateway").as_slice() {
        [pid] => Some(*pid),
        [] => None,
        _ => {
            tracing::warn!("several seckill-gateway processes run; pass --gateway-pid");
            None
        }
    }
}

/// The value of `var` in process `pid`'s environment as it started; `None` when unset or unreadable.
pub fn environ_var(pid: u32, var: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|entry| {
        let value = entry.strip_prefix(var.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(value).into_owned())
    })
}

/// The processes whose program is called `name`.
pub fn find_processes(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let argv0 = cmdline.split(|b| *b == 0).next()?;
        let program = Path::new(std::str::from_utf8(argv0).ok()?).file_name()?;
        (program == name).then_some(pid)
    })
    .collect()
}

/// Samples a process's `VmRSS` until stopped, keeping the highest.
pub struct Sampler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            let mut tick = tokio::time::interval(EVERY);
            loop {
                peak = peak.max(status_kib(pid, "VmRSS").unwrap_or(0));
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => return peak,
                }
            }
        });
        Sampler { stop, task }
    }

    /// The highest sample, in KiB.
    pub async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_rss() {
        let kib = status_kib(std::process::id(), "VmRSS").unwrap();
        assert!(kib > 0);
        assert_eq!(status_kib(std::process::id(), "NoSuchField"), None);
    }

    #[test]
    fn reads_a_process_environment() {
        let me = std::process::id();
        assert_eq!(environ_var(me, "PATH"), std::env::var("PATH").ok());
        assert_eq!(environ_var(me, "SECKILL_NO_SUCH_VARIABLE_EVER"), None);
        // A name that is a prefix of another is not that other.
        assert_eq!(environ_var(me, "PAT"), std::env::var("PAT").ok());
        let mine = find_processes(
            &std::env::current_exe()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy(),
        );
        assert!(mine.contains(&me), "{mine:?}");
    }
}
