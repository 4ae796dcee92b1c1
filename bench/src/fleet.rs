//! The system scaled out on this machine: N `seckill-gateway` and M `seckill-workers` processes the
//! bench starts itself (the binaries beside its own), and an HAProxy in front of the gateways,
//! configured from [`deploy/haproxy.cfg`](../../deploy/haproxy.cfg) with the gateways' addresses,
//! a free port and a stats socket of its own. `seckill-bench flash-sale --gateways N --workers M`
//! drives its sale through [`Fleet::url`]; the tests kill gateways under it.
//!
//! Every process gets the bench's environment (or the variables given), a free
//! `SECKILL_HTTP_ADDR` or `SECKILL_WORKERS_ADDR` of its own, and no `SECKILL_NODE_ID`, so each
//! gateway leases its own snowflake node id. [`Fleet::stop`] stops them (SIGTERM: the gateways
//! flush their relays, the workers ack what they hold), and dropping a fleet kills whatever still
//! runs.

use crate::http::HttpClient;
use anyhow::{Context, bail, ensure};
use http::StatusCode;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The deployment's HAProxy configuration, the template of the fleet's own.
pub const HAPROXY_TEMPLATE: &str = include_str!("../../deploy/haproxy.cfg");
/// The lines between these markers are the gateways.
const SERVERS_BEGIN: &str = "# seckill:servers:begin";
const SERVERS_END: &str = "# seckill:servers:end";
/// The backend whose servers are the gateways.
pub const BACKEND: &str = "gateways";
/// How long a process gets to become ready (`/readyz` 200): it creates and migrates the
/// database, warms Redis and declares the broker's topology first.
const READY_WITHIN: Duration = Duration::from_secs(90);
/// How long a stopped process gets to exit after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub gateways: usize,
    pub workers: usize,
    /// Where `seckill-gateway` and `seckill-workers` are [default: beside the running executable].
    pub binaries: Option<PathBuf>,
    /// Where the logs and `haproxy.cfg` go.
    pub out: PathBuf,
    /// Variables for every process on top of the bench's own environment (a test's
    /// configuration, say).
    pub env: Vec<(String, String)>,
}

/// One process of the fleet.
#[derive(Debug)]
pub struct Member {
    /// `gateway-1`, `workers-2`, `haproxy`.
    pub name: String,
    /// Where it listens: the API, the workers' `/metrics`, or HAProxy's frontend.
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Member {
    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// What it exited with, if it did.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A server of HAProxy's gateway backend, as its stats say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// `gw1` … `gwN`, gateway `i` being `gw<i + 1>`.
    pub name: String,
    /// `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (coming up), `MAINT`, …
    pub status: String,
}

impl ServerState {
    pub fn up(&self) -> bool {
        self.status == "UP"
    }
}

/// N gateways and M workers behind an HAProxy, all started by [`Fleet::start`].
#[derive(Debug)]
pub struct Fleet {
    pub gateways: Vec<Member>,
    pub workers: Vec<Member>,
    pub haproxy: Member,
    /// HAProxy's runtime API socket.
    socket: PathBuf,
}

impl Fleet {
    /// Starts the workers and the first gateway, then the other gateways once the first has
    /// migrated the database, then HAProxy; returns once every process is ready and HAProxy sees
    /// every gateway up. Whatever started is killed if another part fails.
    pub async fn start(opts: &FleetOptions) -> anyhow::Result<Fleet> {
        ensure!(opts.gateways >= 1, "a fleet needs a gateway");
        std::fs::create_dir_all(&opts.out)
            .with_context(|| format!("creating {}", opts.out.display()))?;
        let dir = match &opts.binaries {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()
                .context("finding the bench's own executable")?
                .parent()
                .context("the bench's executable has no directory")?
                .to_owned(),
        };
        let binary = |name: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            ensure!(
                path.is_file(),
                "{} not found beside the bench (cargo build --bins builds it)",
                path.display()
            );
            Ok(path)
        };
        let (gateway_bin, workers_bin) = (binary("seckill-gateway")?, binary("seckill-workers")?);
        let socket = std::env::temp_dir().join(format!(
            "seckill-haproxy-{}-{:08x}.sock",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut fleet = Fleet {
            gateways: Vec::new(),
            workers: Vec::new(),
            haproxy: Member {
                name: "haproxy".into(),
                addr: free_addr()?,
                log: opts.out.join("haproxy.log"),
                child: None,
            },
            socket,
        };
        let spawn = |bin: &Path, name: String, var: &str| -> anyhow::Result<Member> {
            let addr = free_addr()?;
            let log = opts.out.join(format!("{name}.log"));
            let mut command = Command::new(bin);
            command
                .envs(opts.env.iter().map(|(k, v)| (k, v)))
                .env("SECKILL_HTTP_ADDR", "127.0.0.1:0")
                .env("SECKILL_WORKERS_ADDR", "127.0.0.1:0")
                .env(var, addr.to_string())
                .env_remove("SECKILL_NODE_ID");
            let child = spawn_logged(command, &log)
                .with_context(|| format!("starting {}", bin.display()))?;
            Ok(Member {
                name,
                addr,
                log,
                child: Some(child),
            })
        };
        for i in 1..=opts.workers {
            let w = spawn(&workers_bin, format!("workers-{i}"), "SECKILL_WORKERS_ADDR")?;
            fleet.workers.push(w);
        }
        // The first gateway alone: it creates and migrates the database.
        let first = spawn(&gateway_bin, "gateway-1".into(), "SECKILL_HTTP_ADDR")?;
        fleet.gateways.push(first);
        wait_ready(&mut fleet.gateways[0]).await?;
        for i in 2..=opts.gateways {
            let g = spawn(&gateway_bin, format!("gateway-{i}"), "SECKILL_HTTP_ADDR")?;
            fleet.gateways.push(g);
        }
        for g in &mut fleet.gateways {
            wait_ready(g).await?;
        }
        for w in &mut fleet.workers {
            wait_ready(w).await?;
        }

        let servers: Vec<SocketAddr> = fleet.gateways.iter().map(|g| g.addr).collect();
        let config = haproxy_config(
            HAPROXY_TEMPLATE,
            fleet.haproxy.addr,
            &fleet.socket,
            &servers,
        )?;
        let config_path = opts.out.join("haproxy.cfg");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut command = Command::new(haproxy_binary());
        // -db: in the foreground, logging to its output.
        command.arg("-db").arg("-f").arg(&config_path);
        let child = spawn_logged(command, &fleet.haproxy.log)
            .context("starting haproxy (scripts/services.sh installs it from Debian's packages)")?;
        fleet.haproxy.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = fleet.haproxy.exited() {
                bail!(
                    "haproxy exited ({status}); its log:\n{}",
                    tail(&fleet.haproxy.log)
                );
            }
            let states = fleet.servers().await.unwrap_or_default();
            if states.len() == servers.len() && states.iter().all(ServerState::up) {
                break;
            }
            ensure!(
                started.elapsed() < READY_WITHIN,
                "HAProxy does not see every gateway up: {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(fleet)
    }

    /// HAProxy's frontend, `http://127.0.0.1:<port>`: the URL buyers use.
    pub fn url(&self) -> String {
        format!("http://{}", self.haproxy.addr)
    }

    /// The pids of the processes that run, by the part of the pipeline they are (as
    /// [`crate::cpu`] names them: `gateway`, `workers`, `haproxy`).
    pub fn pids(&self) -> BTreeMap<&'static str, Vec<u32>> {
        let pids = |members: &[Member]| members.iter().filter_map(Member::pid).collect();
        BTreeMap::from([
            ("gateway", pids(&self.gateways)),
            ("workers", pids(&self.workers)),
            ("haproxy", self.haproxy.pid().into_iter().collect()),
        ])
    }

    /// SIGKILLs gateway `i` (HAProxy's `gw<i + 1>`).
    pub fn kill_gateway(&mut self, i: usize) {
        self.gateways[i].kill();
    }

    /// The gateway servers' states, from HAProxy's runtime API (`show stat`).
    pub async fn servers(&self) -> anyhow::Result<Vec<ServerState>> {
        let csv = self.runtime_api("show stat").await?;
        parse_stat(&csv, BACKEND)
    }

    /// Runs one command on HAProxy's runtime API socket and returns its answer.
    pub async fn runtime_api(&self, command: &str) -> anyhow::Result<String> {
        let exchange = async {
            let mut stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .with_context(|| format!("connecting to {}", self.socket.display()))?;
            stream.write_all(format!("{command}\n").as_bytes()).await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            anyhow::Ok(answer)
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .context("HAProxy's runtime API did not answer")?
    }

    /// Stops every process: SIGTERM to the gateways and the workers, each given 20 s to finish
    /// (the gateways flush their relays, the workers ack their batches) before SIGKILL; then
    /// HAProxy. Returns the processes that had to be killed or had died before.
    pub async fn stop(mut self) -> Vec<String> {
        let mut trouble = Vec::new();
        let members = self.gateways.iter_mut().chain(self.workers.iter_mut());
        let mut stopping = Vec::new();
        for m in members {
            match m.exited() {
                Some(status) => trouble.push(format!("{} had exited ({status})", m.name)),
                None => {
                    if let Some(pid) = m.pid() {
                        let _ = signal("-TERM", pid);
                        stopping.push(m);
                    } else {
                        trouble.push(format!("{} had been killed", m.name));
                    }
                }
            }
        }
        let deadline = Instant::now() + STOP_WITHIN;
        for m in stopping {
            while m.running() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if m.running() {
                trouble.push(format!("{} did not stop within {STOP_WITHIN:?}", m.name));
            }
            m.kill();
        }
        if let Some(pid) = self.haproxy.pid() {
            let _ = signal("-TERM", pid);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.haproxy.running() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.haproxy.kill();
        trouble
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for m in self.gateways.iter_mut().chain(self.workers.iter_mut()) {
            m.kill();
        }
        self.haproxy.kill();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The configuration of an HAProxy in front of `servers`: `template` (deploy/haproxy.cfg) with
/// its frontend's `bind` line on `bind`, its `stats socket` at `socket`, and one `server gw<i>`
/// line per gateway between the `seckill:servers` markers, each with the template's
/// `default-server` settings.
pub fn haproxy_config(
    template: &str,
    bind: SocketAddr,
    socket: &Path,
    servers: &[SocketAddr],
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let (mut binds, mut sockets, mut markers) = (0, 0, 0);
    let mut skipping = false;
    for line in template.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if skipping {
            if trimmed == SERVERS_END {
                skipping = false;
                markers += 1;
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        if trimmed == SERVERS_BEGIN {
            skipping = true;
            markers += 1;
            out.push_str(line);
            out.push('\n');
            for (i, addr) in servers.iter().enumerate() {
                out.push_str(&format!("{indent}server gw{} {addr}\n", i + 1));
            }
            continue;
        }
        if trimmed.starts_with("bind ") {
            binds += 1;
            out.push_str(&format!("{indent}bind {bind}\n"));
        } else if trimmed.starts_with("stats socket ") {
            sockets += 1;
            out.push_str(&format!(
                "{indent}stats socket {} mode 600 level admin\n",
                socket.display()
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    ensure!(
        binds == 1 && sockets == 1 && markers == 2 && !skipping,
        "the HAProxy template needs one `bind` line, one `stats socket` line and the \
         `{SERVERS_BEGIN}` … `{SERVERS_END}` markers (found {binds}, {sockets}, {markers})"
    );
    Ok(out)
}

/// The servers of `backend` in `show stat`'s CSV.
pub fn parse_stat(csv: &str, backend: &str) -> anyhow::Result<Vec<ServerState>> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .context("show stat: no header")?;
    let column = |name: &str| {
        header
            .split(',')
            .position(|c| c == name)
            .with_context(|| format!("show stat: no {name} column"))
    };
    let (px, sv, status) = (column("pxname")?, column("svname")?, column("status")?);
    Ok(lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > status && f[px] == backend)
        .filter(|f| f[sv] != "FRONTEND" && f[sv] != "BACKEND")
        .map(|f| ServerState {
            name: f[sv].to_owned(),
            status: f[status].to_owned(),
        })
        .collect())
}

/// `haproxy` on the `PATH`, or Debian's `/usr/sbin/haproxy` (not on a user's `PATH`).
fn haproxy_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| "/usr/sbin/haproxy".into())
}

/// Waits until `member` answers `GET /readyz` with 200; fails with its log if it exits first or
/// is not ready in time.
async fn wait_ready(member: &mut Member) -> anyhow::Result<()> {
    let http = HttpClient::default();
    let url = format!("http://{}/readyz", member.addr);
    let started = Instant::now();
    loop {
        if let Some(status) = member.exited() {
            bail!(
                "{} exited ({status}) before it was ready; its log:\n{}",
                member.name,
                tail(&member.log)
            );
        }
        if matches!(http.get(&url).await, Ok((StatusCode::OK, _))) {
            return Ok(());
        }
        ensure!(
            started.elapsed() < READY_WITHIN,
            "{} not ready after {READY_WITHIN:?}; its log:\n{}",
            member.name,
            tail(&member.log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn_logged(mut command: Command, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    Ok(command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()?)
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn signal(sig: &str, pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()?;
    ensure!(status.success(), "kill {sig} {pid}: {status}");
    Ok(())
}

/// The end of a log, for an error.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_becomes_a_fleets_configuration() {
        let bind: SocketAddr = "127.0.0.1:18000".parse().unwrap();
        let servers: Vec<SocketAddr> = ["127.0.0.1:1001", "127.0.0.1:1002"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let config =
            haproxy_config(HAPROXY_TEMPLATE, bind, Path::new("/tmp/x.sock"), &servers).unwrap();
        assert!(config.contains("    bind 127.0.0.1:18000\n"), "{config}");
        assert!(config.contains("stats socket /tmp/x.sock mode 600 level admin\n"));
        assert!(config.contains("    server gw1 127.0.0.1:1001\n    server gw2 127.0.0.1:1002\n"));
        assert!(
            !config.contains("127.0.0.1:8080"),
            "the template's servers are gone"
        );
        // What keeps purchases from being replayed stays as the template says.
        for kept in [
            "retry-on conn-failure",
            "http-request disable-l7-retry",
            "option redispatch",
            "option httpchk GET /readyz",
        ] {
            assert!(config.contains(kept), "{kept} missing from\n{config}");
        }
        assert!(haproxy_config("frontend x\n", bind, Path::new("/s"), &servers).is_err());
    }

    #[test]
    fn show_stat_is_read_for_the_gateways() {
        let csv = "# pxname,svname,qcur,status,weight\n\
                   seckill,FRONTEND,,OPEN,\n\
                   gateways,gw1,0,UP,1\n\
                   gateways,gw2,0,DOWN,1\n\
                   gateways,BACKEND,0,UP,1\n";
        let states = parse_stat(csv, BACKEND).unwrap();
        assert_eq!(
            states,
            [
                ServerState {
                    name: "gw1".into(),
                    status: "UP".into()
                },
                ServerState {
                    name: "gw2".into(),
                    status: "DOWN".into()
                }
            ]
        );
        assert!(states[0].up() && !states[1].up());
    }
}
