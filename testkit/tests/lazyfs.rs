//! The power-loss filesystem ([`LazyFs`]) keeps what was fsynced and loses the rest on a power
//! cut: plain files first, then real servers on it. Redis with `appendfsync always` keeps every
//! acknowledged write and with `appendfsync no` loses them; PostgreSQL keeps every committed row,
//! and loses them with `fsync=off`: the filesystem can tell a durable server from one that is not.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, User};
use seckill_testkit::{LazyFs, RedisOptions, RedisServer, free_port};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[test]
fn a_power_cut_keeps_exactly_what_was_fsynced() {
    let mut fs = LazyFs::temp();
    let dir = fs.path();

    // Written, never synced.
    std::fs::write(dir.join("unsynced"), b"gone after the cut").unwrap();
    // Written and fsynced: its data, and (the pragmatic rule) its name.
    let mut synced = std::fs::File::create(dir.join("synced")).unwrap();
    synced.write_all(b"kept").unwrap();
    synced.sync_all().unwrap();
    // Then more that is never synced: only the first part survives.
    synced.write_all(b" and lost").unwrap();
    drop(synced);
    // A synced file renamed without syncing the directory: the old name survives.
    let mut renamed = std::fs::File::create(dir.join("old-name")).unwrap();
    renamed.write_all(b"renamed").unwrap();
    renamed.sync_all().unwrap();
    drop(renamed);
    std::fs::rename(dir.join("old-name"), dir.join("new-name")).unwrap();
    // A directory made, a file in it synced, then the directory's entry removed by a synced
    // unlink: fsync of the directory persists the removal.
    std::fs::create_dir(dir.join("sub")).unwrap();
    let mut doomed = std::fs::File::create(dir.join("sub/doomed")).unwrap();
    doomed.write_all(b"doomed").unwrap();
    doomed.sync_all().unwrap();
    drop(doomed);
    std::fs::remove_file(dir.join("sub/doomed")).unwrap();
    std::fs::File::open(dir.join("sub"))
        .unwrap()
        .sync_all()
        .unwrap();

    // Before the cut the mount shows every write, as a page cache does.
    assert_eq!(
        read(&dir.join("unsynced")).as_deref(),
        Some(&b"gone after the cut"[..])
    );
    assert_eq!(
        read(&dir.join("synced")).as_deref(),
        Some(&b"kept and lost"[..])
    );
    assert!(!dir.join("old-name").exists());
    let stats = fs.stats();
    assert!(
        stats.dirty_bytes > 0 && stats.fsyncs >= 3 && stats.fsyncdirs >= 1,
        "{stats:?}"
    );
    eprintln!("before the power cut: {stats:?}");

    fs.power_cut();

    assert_eq!(
        read(&dir.join("unsynced")),
        None,
        "an unsynced file survived"
    );
    assert_eq!(read(&dir.join("synced")).as_deref(), Some(&b"kept"[..]));
    assert_eq!(
        read(&dir.join("old-name")).as_deref(),
        Some(&b"renamed"[..])
    );
    assert_eq!(read(&dir.join("new-name")), None);
    assert_eq!(read(&dir.join("sub/doomed")), None);
    // The backing directory is exactly the synced state.
    assert_eq!(
        read(&fs.backing().join("synced")).as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(fs.stats().dirty_bytes, 0);
}

#[test]
fn truncation_modes_and_hard_links_persist_on_fsync() {
    let mut fs = LazyFs::temp();
    let dir = fs.path();
    let path = dir.join("f");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all(&[7u8; 10_000]).unwrap();
    f.sync_all().unwrap();
    // Shrink, then grow past the old end with a write: the gap reads as zeros, never the old
    // bytes, before and after the cut.
    f.set_len(100).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"end", 9_000).unwrap();
    std::fs::hard_link(&path, dir.join("link")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    f.sync_data().unwrap();
    drop(f);

    fs.power_cut();

    let data = std::fs::read(&path).unwrap();
    assert_eq!(data.len(), 9_003);
    assert!(data[..100].iter().all(|b| *b == 7));
    assert!(data[100..9_000].iter().all(|b| *b == 0));
    assert_eq!(&data[9_000..], b"end");
    assert_eq!(std::fs::read(dir.join("link")).unwrap(), data);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&meta), 2);
}

/// `SET lazyfs:<i> v<i>` for each `i` in `keys`, `batch` commands per round trip; returns how
/// many Redis acknowledged with `+OK`.
async fn set_keys(port: u16, keys: std::ops::Range<usize>, batch: usize) -> usize {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut acknowledged = 0;
    let all: Vec<usize> = keys.collect();
    for chunk in all.chunks(batch) {
        let mut request = Vec::new();
        for i in chunk {
            let (key, value) = (format!("lazyfs:{i}"), format!("v{i}"));
            write!(
                request,
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            )
            .unwrap();
        }
        stream.write_all(&request).await.unwrap();
        let expected = b"+OK\r\n".repeat(chunk.len());
        let mut reply = vec![0u8; expected.len()];
        stream.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, expected, "{}", String::from_utf8_lossy(&reply));
        acknowledged += chunk.len();
    }
    acknowledged
}

/// How many of `lazyfs:<i>` for `i` in `0..n` exist, with `EXISTS` on 100 keys at a time.
async fn count_keys(port: u16, n: usize) -> usize {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut present = 0;
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(100) {
        let mut request = format!("*{}\r\n$6\r\nEXISTS\r\n", chunk.len() + 1).into_bytes();
        for i in chunk {
            let key = format!("lazyfs:{i}");
            write!(request, "${}\r\n{key}\r\n", key.len()).unwrap();
        }
        stream.write_all(&request).await.unwrap();
        let mut reply = Vec::new();
        while !reply.ends_with(b"\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            reply.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&reply);
        present += text
            .trim()
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("EXISTS answered {text:?}"));
    }
    present
}

/// Redis's append-only file on the mount, `appendfsync <policy>`: `writes` keys set one per round
/// trip (`batch` 1) or pipelined, Redis SIGKILLed, the power cut, Redis restarted on the same
/// directory. Returns (acknowledged, present after the restart).
async fn redis_across_a_power_cut(policy: &str, writes: usize, batch: usize) -> (usize, usize) {
    let mut fs = LazyFs::temp();
    let options = RedisOptions::default()
        .appendfsync(policy)
        // After the kit's own --dir, so this one wins.
        .arg("dir", &fs.path_str());
    let mut redis = RedisServer::start_ready(options).await;
    let started = Instant::now();
    let acknowledged = set_keys(redis.port(), 0..writes, batch).await;
    let elapsed = started.elapsed();
    let stats = fs.stats();
    eprintln!(
        "appendfsync {policy}: {acknowledged} writes acknowledged in {elapsed:?} ({:.0}/s), {stats:?}",
        acknowledged as f64 / elapsed.as_secs_f64()
    );
    redis.kill();
    fs.power_cut();
    redis.restart();
    redis.wait_ready().await;
    let present = count_keys(redis.port(), writes).await;
    eprintln!("appendfsync {policy}: {present} of {acknowledged} present after the power cut");
    (acknowledged, present)
}

#[tokio::test]
async fn redis_appendfsync_always_keeps_every_acknowledged_write() {
    let (acknowledged, present) = redis_across_a_power_cut("always", 2_000, 1).await;
    assert_eq!(acknowledged, 2_000);
    assert_eq!(present, acknowledged, "acknowledged writes lost");
}

#[tokio::test]
async fn redis_appendfsync_no_loses_acknowledged_writes() {
    let (acknowledged, present) = redis_across_a_power_cut("no", 3_000, 100).await;
    assert_eq!(acknowledged, 3_000);
    assert!(
        present < acknowledged,
        "all {acknowledged} writes survived a power cut without fsync: the filesystem kept \
         unsynced data"
    );
}

/// PostgreSQL's programs (the newest installed major version's).
fn pg_bin(program: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL installed (scripts/services.sh installs it)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|dir| dir.join("bin/initdb").exists())
        .collect();
    versions.sort_by_key(|dir| {
        dir.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .last()
        .expect("a PostgreSQL with initdb under /usr/lib/postgresql")
        .join("bin")
        .join(program)
}

/// `initdb` and `postgres` refuse to run as root: they run as the `postgres` user.
fn as_postgres(command: &mut Command) -> &mut Command {
    let user = User::from_name("postgres")
        .expect("looking up the postgres user")
        .expect("a postgres user (the postgresql package makes it)");
    command
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .current_dir("/")
        .env("HOME", "/")
}

/// A `postgres` server on a data directory, its processes in a group of their own so that a
/// crash kills them all. Killed when dropped.
struct Postgres {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Postgres {
    /// Starts `postgres` on `data`, TCP only on 127.0.0.1, with `-c` for each of `settings`, and
    /// waits until it answers a query (crash recovery included).
    fn start(data: &Path, log: &Path, settings: &[&str]) -> Postgres {
        let port = free_port();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut command = Command::new(pg_bin("postgres"));
        as_postgres(&mut command)
            .arg("-D")
            .arg(data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "max_connections=20"])
            .args(["-c", "shared_buffers=16MB"]);
        for s in settings {
            command.args(["-c", s]);
        }
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting postgres");
        let mut pg = Postgres {
            child: Some(child),
            port,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        while pg.psql("SELECT 1").is_err() {
            if let Some(status) = pg.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("postgres exited ({status}); its log:\n{}", pg.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not answer within 90 s; its log:\n{}",
                pg.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `sql` (statements on separate lines each commit on their own) with psql; its output,
    /// or its error.
    fn psql(&self, sql: &str) -> Result<String, String> {
        let mut child = Command::new(pg_bin("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-f", "-"])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running psql");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// SIGKILL to every process of the server, as a power cut would stop them; returns once
    /// none is left.
    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = Pid::from_raw(child.id() as i32);
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait();
        // The postmaster's children are not ours to wait for: poll the group until it is empty.
        let deadline = Instant::now() + Duration::from_secs(20);
        while killpg(group, None).is_ok() {
            let _ = killpg(group, Signal::SIGKILL);
            assert!(
                Instant::now() < deadline,
                "postgres processes survive SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `initdb` of a cluster in `pgdata/` on the mount, as the `postgres` user.
fn initdb(fs: &LazyFs) -> PathBuf {
    let data = fs.path().join("pgdata");
    std::fs::create_dir(&data).unwrap();
    let user = User::from_name("postgres").unwrap().unwrap();
    std::os::unix::fs::chown(&data, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let started = Instant::now();
    let out = as_postgres(&mut Command::new(pg_bin("initdb")))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
        .output()
        .expect("running initdb");
    assert!(
        out.status.success(),
        "initdb failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("initdb on the mount took {:?}", started.elapsed());
    data
}

/// Inserts `rows` rows into `t`, each `INSERT` its own transaction; all of them committed
/// (acknowledged) once psql succeeds.
fn insert_rows(pg: &Postgres, rows: std::ops::Range<u32>) {
    let sql: String = rows
        .map(|i| format!("INSERT INTO t VALUES ({i});\n"))
        .collect();
    pg.psql(&sql).expect("inserting rows");
}

fn count_rows(pg: &Postgres) -> Result<u32, String> {
    pg.psql("SELECT count(*) FROM t")
        .map(|n| n.parse().expect("a count"))
}

#[test]
fn postgres_keeps_committed_rows_and_loses_them_without_fsync() {
    let mut fs = LazyFs::temp();
    let data = initdb(&fs);
    let log = fs.backing().parent().unwrap().join("postgres.log");

    // fsync on (the default): every committed row survives the power cut.
    let mut pg = Postgres::start(&data, &log, &[]);
    pg.psql("CREATE TABLE t (i int PRIMARY KEY)").unwrap();
    insert_rows(&pg, 0..200);
    assert_eq!(count_rows(&pg), Ok(200));
    eprintln!("fsync=on, before the cut: {:?}", fs.stats());
    pg.kill();
    fs.power_cut();
    let mut pg = Postgres::start(&data, &log, &[]);
    let kept = count_rows(&pg);
    eprintln!("fsync=on: {kept:?} of 200 committed rows after the power cut");
    assert_eq!(
        kept,
        Ok(200),
        "committed rows lost; log:\n{}",
        pg.log_text()
    );
    pg.psql("SELECT sum(i) FROM t")
        .map(|s| assert_eq!(s, (0..200).sum::<u32>().to_string()))
        .unwrap();

    // fsync off: PostgreSQL acknowledges commits it never synced, and the cut takes them.
    pg.kill();
    let mut pg = Postgres::start(&data, &log, &["fsync=off"]);
    insert_rows(&pg, 200..400);
    assert_eq!(count_rows(&pg), Ok(400));
    let stats = fs.stats();
    eprintln!("fsync=off, before the cut: {stats:?}");
    assert!(stats.dirty_bytes > 0, "{stats:?}");
    pg.kill();
    fs.power_cut();
    let pg = Postgres::start(&data, &log, &[]);
    let after = count_rows(&pg);
    eprintln!("fsync=off: {after:?} of 400 committed rows after the power cut");
    assert!(
        after.as_ref().is_ok_and(|n| *n < 400),
        "committed rows under fsync=off all survived: {after:?}"
    );
    // What was synced before stays.
    assert_eq!(after, Ok(200));
}
