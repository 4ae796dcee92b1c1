//! `seckill-lazyfs --backing DIR --mount DIR --control SOCKET`: a FUSE filesystem, in the manner
//! of Jepsen's LazyFS, that mirrors the backing directory at the mount point and keeps every
//! change in memory until it is fsynced (see `state.rs` for what a sync persists). Killing this
//! process, or the control socket's `power-cut`, is a power cut: the backing directory holds
//! exactly what was fsynced.
//!
//! The control socket takes one command per connection, a line, and answers a line:
//!
//! - `ping` → `pong` (the mount is up: the socket is bound only once it is);
//! - `stats` → `dirty_bytes=… writes=… written_bytes=… fsyncs=… fsyncdirs=… synced_bytes=…`;
//! - `power-cut` → `ok`, then the mount is detached and the process exits without a sync.
//!
//! Mounted as root with the mount(2) system call (no fusermount), with `allow_other` (PostgreSQL
//! runs as `postgres`) and `default_permissions` (the kernel checks modes, as on a disk). It
//! unmounts itself and exits on SIGTERM, SIGINT or SIGHUP, and when its parent process dies, so
//! that a killed test leaves no mount behind. `seckill_testkit::LazyFs` runs it.

mod fs;
mod state;

use fs::{LazyFs, Shared, lock};
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{SigSet, Signal};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

struct Args {
    backing: PathBuf,
    mount: PathBuf,
    control: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut backing = None;
    let mut mount = None;
    let mut control = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(flag) = args.next() {
        let slot = match flag.to_str() {
            Some("--backing") => &mut backing,
            Some("--mount") => &mut mount,
            Some("--control") => &mut control,
            _ => return Err(format!("unknown argument {flag:?}")),
        };
        *slot = Some(PathBuf::from(
            args.next()
                .ok_or_else(|| format!("{flag:?} needs a value"))?,
        ));
    }
    Ok(Args {
        backing: backing.ok_or("--backing DIR is required")?,
        mount: mount.ok_or("--mount DIR is required")?,
        control: control.ok_or("--control SOCKET is required")?,
    })
}

/// Detaches the mount (processes still in it get errors, not a hang) and exits at once: no
/// destructor runs, nothing unsynced reaches the backing directory.
fn cut(mount: &Path, why: &str) -> ! {
    eprintln!("seckill-lazyfs: {why}: unmounting {}", mount.display());
    if let Err(e) = umount2(mount, MntFlags::MNT_DETACH) {
        eprintln!("seckill-lazyfs: umount {}: {e}", mount.display());
    }
    std::process::exit(0);
}

fn serve_control(listener: UnixListener, shared: Shared, mount: PathBuf) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            continue;
        }
        let answer = match line.trim() {
            "ping" => "pong".to_owned(),
            "stats" => {
                let inner = lock(&shared);
                let s = inner.state.stats;
                format!(
                    "dirty_bytes={} writes={} written_bytes={} fsyncs={} fsyncdirs={} synced_bytes={}",
                    inner.state.dirty_bytes(),
                    s.writes,
                    s.written_bytes,
                    s.fsyncs,
                    s.fsyncdirs,
                    s.synced_bytes
                )
            }
            "power-cut" => {
                // Hold the lock: no request in flight reaches the backing directory after this.
                let _frozen = lock(&shared);
                let _ = stream.write_all(b"ok\n");
                drop(stream);
                cut(&mount, "power cut");
            }
            other => format!("error unknown command {other:?}"),
        };
        let _ = stream.write_all(format!("{answer}\n").as_bytes());
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!(
                "seckill-lazyfs: {e}\nusage: seckill-lazyfs --backing DIR --mount DIR --control SOCKET"
            );
            return ExitCode::from(2);
        }
    };
    // Modes of new backing files are set explicitly; the umask must not narrow them.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    // One descriptor per file and directory read from the backing directory.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    // Blocked in every thread (they inherit this mask), taken by the waiting thread below.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("seckill-lazyfs: blocking signals: {e}");
        return ExitCode::FAILURE;
    }
    let parent = nix::unistd::getppid();

    let state = match state::State::new(&args.backing) {
        Ok(state) => state,
        Err(e) => {
            eprintln!(
                "seckill-lazyfs: opening the backing directory {}: {e}",
                args.backing.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let shared = fs::shared(state);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("seckill-lazyfs".into()),
        fuser::MountOption::Subtype("seckill-lazyfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::RW,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(4);
    let filesystem = LazyFs {
        shared: shared.clone(),
    };
    let session = match fuser::Session::new(filesystem, &args.mount, &config) {
        Ok(session) => session,
        Err(e) => {
            eprintln!(
                "seckill-lazyfs: mounting {} (root and /dev/fuse needed): {e}",
                args.mount.display()
            );
            return ExitCode::FAILURE;
        }
    };

    let mount = args.mount.clone();
    std::thread::spawn(move || {
        let why = match signals.wait() {
            Ok(signal) => format!("{signal}"),
            Err(e) => format!("waiting for signals failed: {e}"),
        };
        cut(&mount, &why);
    });
    let mount = args.mount.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            if nix::unistd::getppid() != parent {
                cut(&mount, "the parent process exited");
            }
        }
    });
    let _ = std::fs::remove_file(&args.control);
    let listener = match UnixListener::bind(&args.control) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("seckill-lazyfs: binding {}: {e}", args.control.display());
            cut(&args.mount, "no control socket");
        }
    };
    let mount = args.mount.clone();
    std::thread::spawn(move || serve_control(listener, shared, mount));
    eprintln!(
        "seckill-lazyfs: {} mounted over {}",
        args.mount.display(),
        args.backing.display()
    );
    match session.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seckill-lazyfs: {e}");
            ExitCode::FAILURE
        }
    }
}
