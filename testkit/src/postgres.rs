//! A PostgreSQL cluster of a test's own on 127.0.0.1, in a directory the test chooses: a
//! [`LazyFs`](crate::LazyFs) mount, for the tests that cut the power under the workers' database.
//! Unlike [`PostgresServer`](crate::PostgresServer) (inside a netns host, durability traded for
//! speed), it keeps PostgreSQL's durable defaults (`fsync`, `synchronous_commit`,
//! `full_page_writes` on) unless the test's settings say otherwise, and it can be SIGKILLed and
//! started again on the same port and data directory, as after a crash or a power cut.
//!
//! ```ignore
//! let mut fs = LazyFs::temp(); // declared first: unmounted after the server is gone
//! let mut pg = LocalPostgres::init(&fs.path(), &[]).await;
//! config.database_url = pg.database_url("seckill_x");
//! // … commits …
//! pg.kill(); // every process of the cluster, before the cut
//! fs.power_cut();
//! pg.restart().await; // crash recovery from what was fsynced
//! ```

use crate::process::{log_tail, own_temp_dir, remove_own_dir, try_spawn_command_logged};
use crate::redis::free_port;
use crate::wait::wait_for;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start (crash recovery included) may take before the test fails.
const READY_DEADLINE: Duration = Duration::from_secs(90);
/// The operating-system user PostgreSQL runs as: `initdb` and `postgres` refuse root.
pub(crate) const PG_USER: &str = "postgres";

/// A `postgres` server owned by a test, on a free port of 127.0.0.1, TCP only, every client
/// trusted (superuser `postgres`, no password), its processes in a process group of their own so
/// that [`kill`](Self::kill) stops them all at once. Killed when dropped; its data directory is
/// the test's (left in place), its log in a temporary directory of its own.
pub struct LocalPostgres {
    data: PathBuf,
    port: u16,
    settings: Vec<(String, String)>,
    /// The temporary directory holding `postgres.log`.
    root: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

impl LocalPostgres {
    /// Runs `initdb` (as the `postgres` user, trust authentication, UTF-8, locale C, and its own
    /// fsync of everything at the end) in `<dir>/pgdata`, starts the server with `-c name=value`
    /// for each of `settings` (after the kit's own, so they win), and returns once it accepts
    /// connections.
    pub async fn init(dir: &Path, settings: &[(&str, &str)]) -> LocalPostgres {
        let bin = bin_dir();
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data).expect("creating the PostgreSQL data directory");
        let user = nix::unistd::User::from_name(PG_USER)
            .expect("looking up the postgres user")
            .expect("a postgres user (the postgresql package makes it)");
        std::os::unix::fs::chown(&data, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .expect("giving the data directory to postgres");
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod 0700 the data directory");
        let started = Instant::now();
        initdb(&bin, &data, &[], Path::new("/")).await;
        eprintln!(
            "LocalPostgres: initdb in {} took {:?}",
            data.display(),
            started.elapsed()
        );
        let mut pg = LocalPostgres {
            data,
            port: free_port(),
            settings: owned(settings),
            root: own_temp_dir("local-postgres"),
            bin,
            child: None,
        };
        pg.spawn();
        pg.wait_ready().await;
        pg
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (`<dir>/pgdata`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `postgres://postgres@127.0.0.1:<port>/<name>`: a `SECKILL_DATABASE_URL`
    /// (`seckill_infra::db::connect` creates the database if missing).
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The server's stdout and stderr, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// The postmaster's pid; `None` once killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL to every process of the cluster (the postmaster and its backends), as a power cut
    /// stops them: no shutdown checkpoint, no last write. Returns once none is left. A no-op when
    /// it is not running.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = Pid::from_raw(child.id() as i32);
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait();
        // The backends are the postmaster's children, not ours: poll the group until it is empty.
        let deadline = Instant::now() + Duration::from_secs(20);
        while killpg(group, None).is_ok() {
            let _ = killpg(group, Signal::SIGKILL);
            assert!(
                Instant::now() < deadline,
                "postgres processes survive SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server if it runs, then starts it again on the same port, data directory and
    /// settings, and returns once it accepts connections (after its crash recovery).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    /// [`restart`](Self::restart) with `settings` instead of those it ran with, from now on.
    pub async fn restart_with(&mut self, settings: &[(&str, &str)]) {
        self.settings = owned(settings);
        self.restart().await;
    }

    /// Runs `sql` with `psql` as the superuser on the database `postgres` (statements on lines of
    /// their own each commit on their own; the first error stops it): its output, tuples only and
    /// unaligned, or its error.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .arg(self.database_url("postgres"))
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running psql: {e}"))?;
        let written = child
            .stdin
            .take()
            .expect("psql's stdin")
            .write_all(sql.as_bytes());
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for psql: {e}"))?;
        match (written, out.status.success()) {
            (Ok(()), true) => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
            (Ok(()), false) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
            (Err(e), _) => Err(format!("writing to psql: {e}")),
        }
    }

    fn spawn(&mut self) {
        let own = [
            ("listen_addresses", "127.0.0.1"),
            // No socket file: TCP on our own port only.
            ("unix_socket_directories", ""),
            ("max_connections", "100"),
            ("shared_buffers", "32MB"),
        ];
        let mut command = Command::new("setpriv");
        as_postgres(&mut command)
            .arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string()]);
        let theirs = self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (name, value) in own.into_iter().chain(theirs) {
            command.args(["-c", &format!("{name}={value}")]);
        }
        command.current_dir("/").process_group(0);
        let child = try_spawn_command_logged(command, &self.log_path())
            .unwrap_or_else(|e| panic!("starting postgres: {e}"));
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let what = format!("postgres on 127.0.0.1:{} to accept connections", self.port);
        let url = self.database_url("postgres");
        let bin = self.bin.clone();
        let log = self.log_path();
        let child = &mut self.child;
        let started = Instant::now();
        wait_for(&what, READY_DEADLINE, || {
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "postgres exited ({status}) before accepting connections; its log:\n{}",
                    log_tail(&log)
                );
            }
            accepting(&bin, &url)
        })
        .await;
        eprintln!(
            "LocalPostgres: accepting connections on {} after {:?}",
            self.port,
            started.elapsed()
        );
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.kill();
        remove_own_dir(&self.root);
    }
}

fn owned(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    settings
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `setpriv` options that run the program as the `postgres` user (and exec it: the child's pid
/// is the program's).
pub(crate) fn as_postgres(setpriv: &mut Command) -> &mut Command {
    setpriv.args([
        &format!("--reuid={PG_USER}"),
        &format!("--regid={PG_USER}"),
        "--init-groups",
    ])
}

/// Runs `initdb` in `data` as the `postgres` user (trust authentication, UTF-8, locale C, and
/// `options`) from the directory `cwd`. Fails the test, with its output, if it fails.
pub(crate) async fn initdb(bin: &Path, data: &Path, options: &[&str], cwd: &Path) {
    let mut initdb = Command::new("setpriv");
    as_postgres(&mut initdb)
        .arg(bin.join("initdb"))
        .arg("-D")
        .arg(data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
        .args(options)
        .arg("--no-instructions")
        .current_dir(cwd);
    // A second or two of work: off the test's runtime thread.
    let out = tokio::process::Command::from(initdb)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running setpriv … initdb: {e}"));
    assert!(
        out.status.success(),
        "initdb failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `Some(())` once the server at `url` accepts connections (`pg_isready`, waiting a second at
/// most), for [`wait_for`].
pub(crate) fn accepting(bin: &Path, url: &str) -> impl Future<Output = Option<()>> + use<> {
    let mut probe = tokio::process::Command::new(bin.join("pg_isready"));
    probe
        .args(["-q", "-t", "1", "-d", url])
        .stdin(Stdio::null());
    async move {
        probe
            .status()
            .await
            .is_ok_and(|s| s.success())
            .then_some(())
    }
}

/// The newest PostgreSQL's binaries (`/usr/lib/postgresql/<version>/bin`, as Debian installs
/// them), or `$SECKILL_PG_BIN`.
pub(crate) fn bin_dir() -> PathBuf {
    crate::installed("SECKILL_PG_BIN", "/usr/lib/postgresql", |e| {
        let version = e.file_name().to_str()?.parse::<u32>().ok()?;
        let bin = e.path().join("bin");
        bin.join("initdb").exists().then_some((version, bin))
    })
    .expect("no PostgreSQL server under /usr/lib/postgresql (set SECKILL_PG_BIN)")
}
