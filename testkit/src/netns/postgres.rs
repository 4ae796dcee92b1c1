//! A PostgreSQL cluster of a test's own inside a [`Host`]: its own `initdb`, its own data
//! directory, listening on the host's address, so that a partition can come between it and its
//! clients (the machine's shared PostgreSQL is never touched).

use super::Host;
use crate::postgres::{PG_USER, accepting, as_postgres, bin_dir, initdb};
use crate::process::{fail_if_exited, kill_child, lock, own_temp_dir, remove_own_dir};
use crate::redis::free_port;
use crate::wait::wait_for;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long [`PostgresServer::start`] waits for the server to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A `postgres` server owned by a test, in a [`Host`], on a free port of the host's address:
/// a cluster made by `initdb` in a temporary directory of its own, every client trusted (no
/// password; superuser `postgres`), durability traded for speed (`fsync=off`,
/// `synchronous_commit=off`, `full_page_writes=off`) unless the test's settings say otherwise.
/// Stopped (SIGQUIT, an immediate shutdown; SIGKILL after 5 s) and its directory removed when
/// dropped.
///
/// ```ignore
/// let pg = PostgresServer::start(&net.host("db")).await;
/// let db = seckill_infra::db::connect(&pg.database_url("seckill"), 4).await?;
/// ```
pub struct PostgresServer {
    host: Host,
    port: u16,
    /// The temporary directory: `data/`, `socket/` and `postgres.log`.
    root: PathBuf,
    child: Mutex<Option<Child>>,
}

impl PostgresServer {
    /// [`start_with`](Self::start_with) no settings of the test's.
    pub async fn start(host: &Host) -> PostgresServer {
        PostgresServer::start_with(host, &[]).await
    }

    /// Runs `initdb` (as the `postgres` user, trust authentication, UTF-8, locale C), lets every
    /// address in (`host all all 0.0.0.0/0 trust`), starts `postgres` in `host` on a free port of
    /// its address with `-c name=value` for each of `settings` (after the kit's own, so they win),
    /// and returns once it accepts connections (`pg_isready` from the test's namespace). Fails the
    /// test, with the log, if `initdb` fails, the server exits, or it is not ready within 60 s.
    pub async fn start_with(host: &Host, settings: &[(&str, &str)]) -> PostgresServer {
        let bin = bin_dir();
        let root = own_temp_dir("postgres");
        let data = root.join("data");
        for dir in [&data, &root.join("socket")] {
            std::fs::create_dir_all(dir).expect("creating the PostgreSQL directories");
        }
        // The temporary directory is root's; PostgreSQL runs as its own user and insists that
        // it owns its data directory, mode 0700.
        run_checked(
            Command::new("chown")
                .args(["-R", &format!("{PG_USER}:{PG_USER}")])
                .arg(&root),
            "chown",
        );
        run_checked(Command::new("chmod").arg("0700").arg(&data), "chmod");
        let server = PostgresServer {
            host: host.clone(),
            port: free_port(),
            root,
            child: Mutex::new(None),
        };
        // Nothing to fsync for: the cluster lives as long as the test.
        initdb(&bin, &data, &["--no-sync"], &server.root).await;
        // initdb's trust lines cover only the local socket and loopback.
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).expect("reading pg_hba.conf");
        rules.push_str("host all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, rules).expect("writing pg_hba.conf");

        let mut args: Vec<String> = vec![
            "-D".into(),
            data.to_string_lossy().into_owned(),
            "-p".into(),
            server.port.to_string(),
        ];
        let socket = server.root.join("socket");
        let own: [(&str, String); 6] = [
            ("listen_addresses", host.ip().to_string()),
            // Not /var/run/postgresql: the machine's cluster has its socket there, maybe on the
            // same port number (another namespace's port, the same file).
            (
                "unix_socket_directories",
                socket.to_string_lossy().into_owned(),
            ),
            ("fsync", "off".into()),
            ("synchronous_commit", "off".into()),
            ("full_page_writes", "off".into()),
            // Segments in the data directory, not /dev/shm: nothing outlives the directory even
            // after a SIGKILL.
            ("dynamic_shared_memory_type", "mmap".into()),
        ];
        let theirs = settings.iter().map(|&(k, v)| (k, v.to_owned()));
        for (name, value) in own.into_iter().chain(theirs) {
            args.extend(["-c".into(), format!("{name}={value}")]);
        }
        let mut command = host.command("setpriv");
        as_postgres(&mut command)
            .arg(bin.join("postgres"))
            .args(&args)
            .current_dir(&server.root);
        let child = crate::process::try_spawn_command_logged(command, &server.log_path())
            .unwrap_or_else(|e| panic!("starting postgres in {}: {e}", host.netns()));
        *lock(&server.child) = Some(child);
        server.wait_ready(&bin).await;
        server
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@<host ip>:<port>/postgres`: the maintenance database, reachable from
    /// the test and from every host.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// `postgres://postgres@<host ip>:<port>/<name>`: a `SECKILL_DATABASE_URL`
    /// (`seckill_infra::db::connect` creates the database if missing).
    pub fn database_url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@{}:{}/{name}",
            self.host.ip(),
            self.port
        )
    }

    /// The server's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// The postmaster's pid; `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.child).as_ref().map(Child::id)
    }

    async fn wait_ready(&self, bin: &Path) {
        let what = format!(
            "postgres on {}:{} to accept connections",
            self.host.ip(),
            self.port
        );
        wait_for(&what, READY_DEADLINE, || {
            let who = format!("postgres in {}", self.host.netns());
            fail_if_exited(&self.child, &who, "accepting connections", &self.log_path());
            accepting(bin, &self.url())
        })
        .await;
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // SIGQUIT: the postmaster stops its backends and exits without a checkpoint, releasing
        // its shared memory, which a SIGKILL would leave behind.
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-QUIT", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                let gone = lock(&self.child)
                    .as_mut()
                    .is_none_or(|c| c.try_wait().ok().flatten().is_some());
                if gone {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        kill_child(&mut self.child);
        remove_own_dir(&self.root);
    }
}

fn run_checked(command: &mut Command, what: &str) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(status.success(), "{what} failed: {status}");
}
