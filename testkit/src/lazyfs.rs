//! A filesystem that loses, on a simulated power cut, everything not fsynced: the test's way to
//! prove that data a server acknowledged survives losing power, not just the server's crash.
//!
//! [`LazyFs`] mounts the `seckill-lazyfs` binary of this crate (a FUSE filesystem in the manner
//! of Jepsen's LazyFS) over a backing directory. The mount shows every write at once, as a page
//! cache does; the backing directory receives a file's data when the file is fsynced, and a
//! directory's entries when the directory is (or, pragmatically, a file's own names when the file
//! is). [`power_cut`](LazyFs::power_cut) drops everything else and mounts the backing directory
//! afresh, so the next server started on [`path`](LazyFs::path) reads only what was fsynced.
//!
//! The binary is found next to the test executable (`target/<profile>/seckill-lazyfs`, which
//! `cargo build --workspace --bins` in `scripts/test.sh` builds first), or at
//! `SECKILL_LAZYFS_BIN`. Mounting needs root and `/dev/fuse`, not fusermount.
//!
//! ```ignore
//! let mut fs = LazyFs::temp(); // declared first: dropped (unmounted) after the server
//! let options = RedisOptions::default().arg("dir", &fs.path_str()); // the last --dir wins
//! let mut redis = RedisServer::start_ready(options).await;
//! // … writes acknowledged by Redis …
//! redis.kill(); // SIGKILL every process using the mount first
//! fs.power_cut();
//! redis.restart(); // reads only what Redis fsynced
//! redis.wait_ready().await;
//! ```

use crate::process::{own_temp_dir, remove_own_dir, try_spawn_command_logged};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long mounting may take before the test fails.
const MOUNT_DEADLINE: Duration = Duration::from_secs(20);

/// What the filesystem did since it was (re)mounted, from its control socket.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LazyFsStats {
    /// Bytes in pages written and not yet fsynced: what a power cut now would lose.
    pub dirty_bytes: u64,
    pub writes: u64,
    pub written_bytes: u64,
    /// fsync and fdatasync calls on files.
    pub fsyncs: u64,
    /// fsync calls on directories.
    pub fsyncdirs: u64,
    /// Bytes the syncs wrote to the backing directory.
    pub synced_bytes: u64,
}

/// A mounted power-loss filesystem over a backing directory. Unmounted when dropped, even when
/// the test panics (what was not fsynced is then lost, as in a power cut); if the test process
/// dies, the filesystem process notices and unmounts itself.
pub struct LazyFs {
    backing: PathBuf,
    /// Our temporary directory: `mnt/` (the mount point), `control.sock`, `lazyfs.log`, and
    /// `backing/` for [`temp`](Self::temp).
    root: PathBuf,
    child: Option<Child>,
}

impl LazyFs {
    /// Mounts a new filesystem over `backing` (an existing directory, left in place when
    /// dropped) at a mount point of its own. Fails the test if it cannot mount.
    pub fn mount(backing: &Path) -> LazyFs {
        let backing = backing
            .canonicalize()
            .unwrap_or_else(|e| panic!("the backing directory {}: {e}", backing.display()));
        LazyFs::mount_in(own_temp_dir("lazyfs"), backing)
    }

    /// [`mount`](Self::mount) over a new, empty backing directory of its own, removed when
    /// dropped (kept with `SECKILL_KEEP_TEST_DATA`).
    pub fn temp() -> LazyFs {
        let root = own_temp_dir("lazyfs");
        let backing = root.join("backing");
        std::fs::create_dir(&backing).expect("creating the backing directory");
        LazyFs::mount_in(root, backing)
    }

    /// Mounts `backing` at the mount point `mnt/` it makes in `root`, our temporary directory.
    fn mount_in(root: PathBuf, backing: PathBuf) -> LazyFs {
        std::fs::create_dir(root.join("mnt")).expect("creating the mount point");
        let mut fs = LazyFs {
            backing,
            root,
            child: None,
        };
        fs.start();
        fs
    }

    /// The mount point: where the server under test keeps its data.
    pub fn path(&self) -> PathBuf {
        self.root.join("mnt")
    }

    /// [`path`](Self::path) as a string, for a command line.
    pub fn path_str(&self) -> String {
        self.path().to_string_lossy().into_owned()
    }

    /// The backing directory: exactly what was fsynced, once [`power_cut`](Self::power_cut)
    /// has run. Read it only through [`path`](Self::path) while mounted.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// The filesystem process's log (it logs only mounts, unmounts and errors).
    pub fn log_path(&self) -> PathBuf {
        self.root.join("lazyfs.log")
    }

    fn control_path(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    /// A power cut: everything written and not fsynced is lost, then the backing directory is
    /// mounted afresh at the same [`path`](Self::path). SIGKILL every process that uses the
    /// mount before (`RedisServer::kill`, …): one still running sees its files vanish (its
    /// calls fail with ENOTCONN) and must not touch the new mount.
    pub fn power_cut(&mut self) {
        self.stop();
        self.start();
    }

    /// The filesystem's counters since it was (re)mounted.
    pub fn stats(&self) -> LazyFsStats {
        let answer = self
            .control("stats")
            .unwrap_or_else(|e| panic!("seckill-lazyfs stats: {e}; its log:\n{}", self.log()));
        let mut stats = LazyFsStats::default();
        for pair in answer.split_whitespace() {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = value.parse().unwrap_or(0);
            match key {
                "dirty_bytes" => stats.dirty_bytes = value,
                "writes" => stats.writes = value,
                "written_bytes" => stats.written_bytes = value,
                "fsyncs" => stats.fsyncs = value,
                "fsyncdirs" => stats.fsyncdirs = value,
                "synced_bytes" => stats.synced_bytes = value,
                _ => {}
            }
        }
        stats
    }

    fn log(&self) -> String {
        crate::process::log_tail(&self.log_path())
    }

    /// One command over the control socket, its one-line answer.
    fn control(&self, command: &str) -> std::io::Result<String> {
        let mut stream = UnixStream::connect(self.control_path())?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(format!("{command}\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line.trim().to_owned())
    }

    fn start(&mut self) {
        let binary = binary();
        let mut command = Command::new(&binary);
        command
            .arg("--backing")
            .arg(&self.backing)
            .arg("--mount")
            .arg(self.path())
            .arg("--control")
            .arg(self.control_path());
        let child = try_spawn_command_logged(command, &self.log_path())
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        self.child = Some(child);
        // The socket answers only once the mount is up.
        let deadline = Instant::now() + MOUNT_DEADLINE;
        loop {
            if self.control("ping").is_ok_and(|a| a == "pong") {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "seckill-lazyfs exited ({status}) before mounting (root and /dev/fuse are \
                     needed); its log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "seckill-lazyfs did not mount {} within {MOUNT_DEADLINE:?}; its log:\n{}",
                self.path().display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends the filesystem process without a sync and makes sure nothing is mounted at
    /// [`path`](Self::path) any more.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // `power-cut` detaches the mount and exits; SIGKILL if it does not answer.
        if self.control("power-cut").is_err() {
            let _ = child.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.wait();
        // A process killed before it could detach leaves a dead mount behind.
        let mount = self.path();
        if is_mounted(&mount) {
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        self.stop();
        // Never remove through a mount: that would delete the backing directory's files.
        if is_mounted(&self.path()) || std::fs::remove_dir(self.path()).is_err() {
            eprintln!(
                "seckill-lazyfs: {} is still mounted or not empty; leaving {}",
                self.path().display(),
                self.root.display()
            );
            return;
        }
        remove_own_dir(&self.root);
    }
}

/// The `seckill-lazyfs` binary: `SECKILL_LAZYFS_BIN`, or beside the running test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/seckill-lazyfs`).
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SECKILL_LAZYFS_BIN") {
        return PathBuf::from(path);
    }
    let binary = crate::workspace_binary("seckill-lazyfs");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p seckill-testkit --bins` (scripts/test.sh \
         builds every binary first), or point SECKILL_LAZYFS_BIN at it",
        binary.display()
    );
    binary
}

/// Whether `path` is a mount point, from /proc/self/mountinfo (its fifth field, with spaces and
/// the like escaped as octal).
fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| point == wanted)
}
