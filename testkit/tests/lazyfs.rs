//! The power-loss filesystem ([`LazyFs`]) keeps what was fsynced and loses the rest on a power
//! cut: plain files first, then real servers on it. Redis with `appendfsync always` keeps every
//! acknowledged write and with `appendfsync no` loses them; PostgreSQL keeps every committed row,
//! and loses them with `fsync=off`: the filesystem can tell a durable server from one that is not.

use seckill_testkit::{LazyFs, LocalPostgres, RedisOptions, RedisServer};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;
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

/// Inserts `rows` rows into `t`, each `INSERT` its own transaction; all of them committed
/// (acknowledged) once psql succeeds.
fn insert_rows(pg: &LocalPostgres, rows: std::ops::Range<u32>) {
    let sql: String = rows
        .map(|i| format!("INSERT INTO t VALUES ({i});\n"))
        .collect();
    pg.psql(&sql).expect("inserting rows");
}

fn count_rows(pg: &LocalPostgres) -> Result<u32, String> {
    pg.psql("SELECT count(*) FROM t")
        .map(|n| n.parse().expect("a count"))
}

#[tokio::test]
async fn postgres_keeps_committed_rows_and_loses_them_without_fsync() {
    let mut fs = LazyFs::temp();
    let mut pg = LocalPostgres::init(&fs.path(), &[]).await;
    let log = pg.log_path();
    let log = || std::fs::read_to_string(&log).unwrap_or_default();

    // fsync on (the default): every committed row survives the power cut.
    pg.psql("CREATE TABLE t (i int PRIMARY KEY)").unwrap();
    insert_rows(&pg, 0..200);
    assert_eq!(count_rows(&pg), Ok(200));
    eprintln!("fsync=on, before the cut: {:?}", fs.stats());
    pg.kill();
    fs.power_cut();
    pg.restart().await;
    let kept = count_rows(&pg);
    eprintln!("fsync=on: {kept:?} of 200 committed rows after the power cut");
    assert_eq!(kept, Ok(200), "committed rows lost; log:\n{}", log());
    pg.psql("SELECT sum(i) FROM t")
        .map(|s| assert_eq!(s, (0..200).sum::<u32>().to_string()))
        .unwrap();

    // fsync off: PostgreSQL acknowledges commits it never synced, and the cut takes them.
    pg.restart_with(&[("fsync", "off")]).await;
    insert_rows(&pg, 200..400);
    assert_eq!(count_rows(&pg), Ok(400));
    let stats = fs.stats();
    eprintln!("fsync=off, before the cut: {stats:?}");
    assert!(stats.dirty_bytes > 0, "{stats:?}");
    pg.kill();
    fs.power_cut();
    pg.restart_with(&[]).await;
    let after = count_rows(&pg);
    eprintln!("fsync=off: {after:?} of 400 committed rows after the power cut");
    assert!(
        after.as_ref().is_ok_and(|n| *n < 400),
        "committed rows under fsync=off all survived: {after:?}"
    );
    // What was synced before stays.
    assert_eq!(after, Ok(200));
}
