//! The child processes behind [`RedisServer`](crate::RedisServer) and
//! [`Sentinel`](crate::Sentinel): spawning with a log file, signalling, killing, and their
//! temporary directories.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// Where the workspace's binary `name` is built: beside the running test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`). It may not be built yet: the
/// caller says how to build it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("the test executable's directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("the target directory");
    }
    dir.join(name)
}

/// A program or library this machine has installed: `$var` when it is set, else the path `pick`
/// names for an entry of `dir` (with a rank: the highest wins, such as a version), if any exists.
pub fn installed<R: Ord>(
    var: &str,
    dir: &str,
    pick: impl Fn(&std::fs::DirEntry) -> Option<(R, PathBuf)>,
) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(path.into());
    }
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    let found = entries.filter_map(|e| pick(&e)).filter(|(_, p)| p.exists());
    found.max_by(|a, b| a.0.cmp(&b.0)).map(|(_, path)| path)
}

pub(crate) fn lock(child: &Mutex<Option<Child>>) -> std::sync::MutexGuard<'_, Option<Child>> {
    child
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The exit status if the process has exited; panics if there is no process (killed).
pub(crate) fn exited(child: &Mutex<Option<Child>>) -> Option<std::process::ExitStatus> {
    match lock(child).as_mut() {
        Some(c) => c.try_wait().ok().flatten(),
        None => panic!("waiting on a server that was killed and not restarted"),
    }
}

/// Fails the test, with the tail of its log, if `who`'s process has exited before `what`.
pub(crate) fn fail_if_exited(child: &Mutex<Option<Child>>, who: &str, what: &str, log: &Path) {
    let exited = lock(child)
        .as_mut()
        .and_then(|c| c.try_wait().ok().flatten());
    if let Some(status) = exited {
        panic!(
            "{who} exited ({status}) before {what}; its log:\n{}",
            log_tail(log)
        );
    }
}

pub(crate) fn kill_child(child: &mut Mutex<Option<Child>>) {
    let slot = child
        .get_mut()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(mut c) = slot.take() {
        // SIGKILL (also ends a SIGSTOPped process), then reap it: once this returns, the port
        // is closed and the files are no longer written.
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// SIGKILL to every process of the group `pgid` (the workspace forbids `unsafe`: no `libc::kill`).
pub(crate) fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Sends `SIG<sig>` with the `kill` command (the workspace forbids `unsafe`, so no `libc::kill`).
pub(crate) fn signal(pid: Option<u32>, sig: &str, what: &str) {
    let pid = pid.unwrap_or_else(|| panic!("SIG{sig} to a {what} that is not running"));
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("running kill -{sig} {pid}: {e}"));
    assert!(status.success(), "kill -{sig} {pid} failed: {status}");
}

/// A new, empty directory under the system's temporary directory.
pub(crate) fn own_temp_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "seckill-{kind}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("creating a temporary directory");
    dir
}

pub(crate) fn remove_own_dir(dir: &Path) {
    if std::env::var_os("SECKILL_KEEP_TEST_DATA").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub(crate) fn try_spawn_logged(
    program: &str,
    args: &[String],
    log: &Path,
) -> std::io::Result<Child> {
    let mut command = Command::new(program);
    command.args(args);
    try_spawn_command_logged(command, log)
}

/// Spawns `command` (e.g. one made by [`Host::command`](crate::Host::command)) with no stdin and
/// its stdout and stderr appended to `log`.
pub(crate) fn try_spawn_command_logged(mut command: Command, log: &Path) -> std::io::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    command.stdin(Stdio::null()).stdout(out).stderr(err).spawn()
}

pub(crate) fn spawn_logged(program: &str, args: &[String], log: &Path) -> Child {
    try_spawn_logged(program, args, log)
        .unwrap_or_else(|e| panic!("starting {program} (scripts/services.sh installs Redis): {e}"))
}

/// The last few KiB of a log file, for a failure message.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(4096);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}
