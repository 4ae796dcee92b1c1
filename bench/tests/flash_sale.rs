//! End to end: the real `seckill-gateway` and `seckill-workers` binaries on free ports of a test
//! namespace and database, and `seckill-bench flash-sale` run against them as an operator would.

mod common;

use seckill_testkit::{Backend, TestEnv, env_vars, wait_for};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

/// A child process, killed when the test ends however it ends.
struct Running(Child);

impl Running {
    fn spawn(binary: &Path, vars: &[(&str, String)], log: &Path) -> Running {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(binary)
            .envs(vars.iter().cloned())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Running(child)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn ready(addr: SocketAddr) -> Option<()> {
    let client = seckill_bench::http::HttpClient::default();
    let (status, _) = client.get(&format!("http://{addr}/readyz")).await.ok()?;
    status.is_success().then_some(())
}

#[tokio::test]
async fn a_flash_sale_keeps_every_invariant() {
    let mut env = TestEnv::new(Backend::Postgres);
    env.config.http_addr = free_addr();
    env.config.workers_addr = free_addr();
    env.config.payment_timeout = Duration::from_secs(5);
    let c = env.config.clone();
    let vars = env_vars(&c);
    let out = std::env::temp_dir().join(format!("seckill-bench-{}", c.namespace));
    std::fs::create_dir_all(&out).unwrap();

    let binaries = common::built_binaries();
    let (gateway, workers) = (
        binaries.join("seckill-gateway"),
        binaries.join("seckill-workers"),
    );
    let _workers = Running::spawn(&workers, &vars, &out.join("workers.log"));
    let gateway_process = Running::spawn(&gateway, &vars, &out.join("gateway.log"));
    wait_for("the workers to be ready", Duration::from_secs(60), || {
        ready(c.workers_addr)
    })
    .await;
    wait_for("the gateway to be ready", Duration::from_secs(60), || {
        ready(c.http_addr)
    })
    .await;

    let gateway_pid = gateway_process.0.id().to_string();
    let args = [
        "--stock",
        "50",
        "--requests",
        "2000",
        "--connections",
        "32",
        "--pay-ratio",
        "0.5",
        "--duplicates",
        "0.2",
        "--reorder",
        // The baseline too: its sold-out path alone pauses this sale's workers (SIGSTOP), which
        // must find them continued for the sale.
        "--baseline",
        "--gateway-pid",
        &gateway_pid,
    ];
    let report = common::run_flash_sale(&vars, &args, &out).await;
    assert_eq!(report["load"]["status_codes"]["202"], 50);
    let ends = &report["end_states"];
    let count = |s: &str| ends[s].as_u64().unwrap_or(0);
    assert_eq!(count("PAID") + count("REFUND_REQUIRED"), 25, "{ends}");
    assert_eq!(
        count("PAID") + count("REFUND_REQUIRED") + count("TIMED_OUT"),
        50,
        "{ends}"
    );
    assert!(out.join("report.svg").exists());
    // The sold-out path alone: an item of no stock, every answer `409`, beside the bare server.
    let baseline = &report["baseline"];
    assert_eq!(
        baseline["gateway_alone"]["status_codes"]["409"], 2000,
        "{baseline}"
    );
    assert!(baseline["http"]["requests_per_sec"].as_f64() > Some(0.0));
    assert!(out.join("alone-oha.json").exists() && out.join("baseline-oha.json").exists());
    assert!(!out.join("alone-oha.round.json").exists());
    // What an order cost in CPU: every part of the pipeline found and read (a part's time may round
    // to 0 at 10 ms a tick over 50 orders; the processes must be there).
    let cpu = &report["cpu"];
    assert_eq!(cpu["orders"], 50, "{cpu}");
    for part in ["gateway", "workers", "redis", "rabbitmq", "database"] {
        assert!(
            cpu["parts"][part]["processes"].as_u64() >= Some(1),
            "{part}: {cpu}"
        );
    }
    assert!(cpu["total_us_per_order"].as_f64() > Some(0.0), "{cpu}");
    let svg = std::fs::read_to_string(out.join("report.svg")).unwrap();
    assert!(
        svg.contains("CPU per accepted order"),
        "the SVG shows the cost"
    );
    assert!(
        report["rss"]["peak_kib"].as_u64() > Some(0),
        "the gateway's memory was read"
    );

    let _ = std::fs::remove_dir_all(&out);
    env.cleanup().await;
}
