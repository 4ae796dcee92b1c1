//! The command line: `baseline`, `pay`, `flash-sale` and `item-page`.

use crate::fleet::{Fleet, FleetOptions};
use crate::provider::{self, Faults, PayOptions, fraction};
use crate::report::{self, Report};
use crate::sale::{self, SaleOptions};
use crate::svg;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use seckill_infra::Config;
use seckill_schema::{ItemId, UserId};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Unpaid orders are waited for up to this payment timeout; past it, they are left awaiting.
const LONGEST_TIMEOUT_WAITED: Duration = Duration::from_secs(300);

/// The seckill operator's tool: set up a sale, drive load with oha, pay orders as a payment
/// provider would, audit the invariants, report.
///
/// Configuration comes from the SECKILL_* environment variables the gateway and workers read
/// (SECKILL_HTTP_ADDR, SECKILL_REDIS_URL, SECKILL_AMQP_URL, SECKILL_DATABASE_URL,
/// SECKILL_NAMESPACE, SECKILL_JWT_SECRET, SECKILL_TICKET_SECRET, SECKILL_ADMIN_TOKEN,
/// SECKILL_WEBHOOK_SECRET,
/// SECKILL_PAYMENT_TIMEOUT_SECS): run the bench with the same values as the system under test.
#[derive(Debug, Parser)]
#[command(name = "seckill-bench", version, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure the ceilings the gateway is compared against, with the same oha settings: a bare
    /// hyper server answering a constant JSON body, and redis-benchmark running the purchase
    /// script from C clients. Writes DIR/baseline.json.
    Baseline(BaselineArgs),
    /// Act as the payment provider: pay orders awaiting payment through the gateway's real
    /// webhook, with valid signatures, and optionally duplicates, reordering, wrong amounts and
    /// failures; and confirm every refund owed (REFUNDED, with the refunded payment's id) for
    /// orders in REFUND_REQUESTED or REFUND_REQUIRED. Exits non-zero unless every callback was
    /// answered 200.
    Pay(PayArgs),
    /// Run one whole flash sale against a running gateway and workers: create an item, fire
    /// tickets at POST /seckill with oha, wait for the pipeline to drain, pay a share of the
    /// orders, wait for the rest to time out, audit every invariant of the contract. Writes
    /// DIR/report.json and DIR/report.svg; exits non-zero when an invariant is broken.
    FlashSale(FlashSaleArgs),
    /// Measure the public product page: oha firing GET /items/{item_id} at a running gateway
    /// (answered from its per-gateway cache), then at a bare hyper server with the same
    /// settings. Creates an item unless --item names one. Writes DIR/item-page.json.
    ItemPage(ItemPageArgs),
    /// Print a user's JWT, signed with $SECKILL_JWT_SECRET as the gateway checks it: for trying
    /// the API with curl (`Authorization: Bearer $(seckill-bench token --user 42)`).
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id the token names (its `sub`).
    #[arg(long)]
    pub user: u64,
    /// How long the token is valid.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u32,
}

#[derive(Debug, Args)]
pub struct ItemPageArgs {
    /// Requests per measurement.
    #[arg(short = 'n', long, default_value_t = 20_000)]
    pub requests: u64,
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub connections: u64,
    /// The item to ask for [default: a new one, created through the admin API].
    #[arg(long)]
    pub item: Option<u64>,
    /// The gateway's base URL [default: http://$SECKILL_HTTP_ADDR].
    #[arg(long)]
    pub gateway: Option<String>,
    /// Where to write item-page.json and oha's outputs.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct BaselineArgs {
    /// Requests per measurement.
    #[arg(short = 'n', long, default_value_t = 20_000)]
    pub requests: u64,
    /// Concurrent connections (oha) or clients (redis-benchmark).
    #[arg(short = 'c', long, default_value_t = 64)]
    pub connections: u64,
    /// Where to write baseline.json.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct PayArgs {
    /// The gateway's base URL [default: http://$SECKILL_HTTP_ADDR].
    #[arg(long)]
    pub gateway: Option<String>,
    /// Pay only orders this namespace's gateway knows [default: $SECKILL_NAMESPACE].
    #[arg(long)]
    pub namespace: Option<String>,
    /// The workers' database [default: $SECKILL_DATABASE_URL].
    #[arg(long)]
    pub database_url: Option<String>,
    /// Pay only this item's orders.
    #[arg(long)]
    pub item: Option<u64>,
    /// Share of the orders awaiting payment to pay.
    #[arg(long, default_value_t = 1.0, value_parser = fraction)]
    pub ratio: f64,
    /// Wait this long before the first callback.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    #[command(flatten)]
    pub faults: Faults,
    /// The webhook's HMAC secret [default: $SECKILL_WEBHOOK_SECRET].
    #[arg(long)]
    pub webhook_secret: Option<String>,
    /// Callbacks in flight at once.
    #[arg(long, default_value_t = provider::CONCURRENCY)]
    pub concurrency: usize,
}

impl FlashSaleArgs {
    /// The stock and the per-user limit of the sale's profile.
    pub fn shape(&self) -> anyhow::Result<(i64, i32)> {
        Ok(match self.profile {
            Profile::SoldOut => (
                self.stock
                    .context("--stock is required with --profile sold-out")?,
                self.per_user_limit,
            ),
            Profile::InStock => (
                self.stock.unwrap_or_default().max(2 * self.requests as i64),
                self.per_user_limit.max(1000),
            ),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    SoldOut,
    InStock,
}

#[derive(Debug, Args)]
// A sale's callbacks are delivered twice one time in ten, unless told otherwise.
#[command(mut_arg("duplicates", |a| a.default_value("0.1")))]
pub struct FlashSaleArgs {
    /// The sale's shape. `sold-out`: the `--stock` given, most requests answered `sold_out` (a
    /// flash sale). `in-stock`: stock twice the requests and a per-user limit of 1,000 (unless
    /// given higher), so every purchase sells and the whole pipeline carries each one (the shape
    /// of the usual order-system benchmarks).
    #[arg(long, value_enum, default_value_t = Profile::SoldOut)]
    pub profile: Profile,
    /// Units on sale; required with `--profile sold-out`.
    #[arg(long)]
    pub stock: Option<i64>,
    /// POST /seckill requests to fire.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub requests: u64,
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub connections: u64,
    /// Share of the orders awaiting payment that get paid; the rest time out.
    #[arg(long, default_value_t = 0.5, value_parser = fraction)]
    pub pay_ratio: f64,
    /// Where to write report.json, report.svg, oha.json and the request bodies.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// The gateway's base URL [default: http://$SECKILL_HTTP_ADDR].
    #[arg(long)]
    pub gateway: Option<String>,
    /// Share of the requests that are repeat attempts by the same buyers. oha draws the bodies at
    /// random, so more buyers than this repeat in practice.
    #[arg(long, default_value_t = 0.2, value_parser = fraction)]
    pub repeat_ratio: f64,
    /// Units one buyer may hold.
    #[arg(long, default_value_t = 1)]
    pub per_user_limit: i32,
    /// Price of one unit, in cents.
    #[arg(long, default_value_t = 990)]
    pub price_cents: i64,
    #[command(flatten)]
    pub faults: Faults,
    /// How long the workers get to take every accepted order to AWAITING_PAYMENT.
    #[arg(long, default_value_t = 120)]
    pub drain_timeout_secs: u64,
    /// Audit without waiting for unpaid orders to time out (done anyway when
    /// SECKILL_PAYMENT_TIMEOUT_SECS is over 300).
    #[arg(long)]
    pub skip_timeouts: bool,
    /// Also measure the baseline first, and show the gateway's rates against it, and the sale's
    /// path alone, with this namespace's workers paused (SIGSTOP, then SIGCONT): the same burst at
    /// a second item, of no stock (the sold-out path), or, with `--profile in-stock`, of the
    /// sale's stock (the in-stock path; that item drained before the sale).
    #[arg(long)]
    pub baseline: bool,
    /// The gateway's pid, for its memory [default: the one seckill-gateway process found].
    #[arg(long, conflicts_with = "gateways")]
    pub gateway_pid: Option<u32>,
    /// Start this many `seckill-gateway` processes (the binaries beside this one, each on a free
    /// port, each leasing its own node id) behind an HAProxy of the bench's own, configured from
    /// deploy/haproxy.cfg, and drive the sale through HAProxy; everything started is stopped when
    /// the run ends. The report's CPU counts these processes and HAProxy. 0: the sale goes to the
    /// gateway at --gateway.
    #[arg(long, default_value_t = 0, conflicts_with = "gateway")]
    pub gateways: usize,
    /// With --gateways: start this many `seckill-workers` processes as well (0: the workers that
    /// run already).
    #[arg(long, default_value_t = 1, requires = "gateways")]
    pub workers: usize,
    /// Spread the item's stock over this many Redis shards (hash slots; 1 to 16): the report
    /// shows each shard's sales and transfers and each Redis master's CPU.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub shards: u8,
}

/// `http://$SECKILL_HTTP_ADDR`, with a wildcard listen address made reachable.
fn default_gateway(config: &Config) -> String {
    let mut addr = config.http_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    match cli.command {
        Command::Baseline(args) => baseline(&config, args).await,
        Command::Pay(args) => pay(&config, args).await,
        Command::FlashSale(args) => flash_sale(&config, args).await,
        Command::ItemPage(args) => item_page(&config, args).await,
        Command::Token(args) => {
            let jwt = seckill_infra::auth::Jwt::new(&config.jwt_secret);
            println!("{}", jwt.mint(UserId(args.user), i64::from(args.ttl_secs)));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn item_page(config: &Config, args: ItemPageArgs) -> anyhow::Result<ExitCode> {
    let opts = crate::page::PageOptions {
        gateway: args
            .gateway
            .unwrap_or_else(|| default_gateway(config))
            .trim_end_matches('/')
            .to_owned(),
        item: args.item.map(ItemId),
        requests: args.requests,
        connections: args.connections,
        out: args.out,
    };
    let p = crate::page::run(config, &opts).await?;
    print!("{}", report::page_table(&p));
    let path = opts.out.join("item-page.json");
    report::write_json(&path, &p)?;
    println!("wrote {}", path.display());
    Ok(if p.page.count(200) == p.requests {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn baseline(config: &Config, args: BaselineArgs) -> anyhow::Result<ExitCode> {
    crate::oha::prepare(&args.out).await?;
    let b = crate::baseline::run(
        &config.redis_url,
        args.requests,
        args.connections,
        None,
        &args.out,
    )
    .await?;
    print!("{}", report::baseline_table(&b));
    let path = args.out.join("baseline.json");
    report::write_json(&path, &b)?;
    println!("wrote {}", path.display());
    Ok(ExitCode::SUCCESS)
}

async fn pay(config: &Config, args: PayArgs) -> anyhow::Result<ExitCode> {
    let gateway = args.gateway.unwrap_or_else(|| default_gateway(config));
    let mut opts = PayOptions::new(config, &gateway);
    opts.namespace = args.namespace.unwrap_or(opts.namespace);
    opts.database_url = args.database_url.unwrap_or(opts.database_url);
    opts.webhook_secret = args.webhook_secret.unwrap_or(opts.webhook_secret);
    opts.item = args.item.map(ItemId);
    opts.ratio = args.ratio;
    opts.delay = Duration::from_millis(args.delay_ms);
    opts.faults = args.faults;
    opts.concurrency = args.concurrency;
    let r = provider::pay(&opts).await?;
    println!(
        "{} orders awaiting payment ({} of other namespaces left alone); callbacks for {}: \
         {} paid, {} wrong amount, {} failed, {} duplicates; {} refunds confirmed",
        r.awaiting,
        r.elsewhere,
        r.chosen,
        r.paid,
        r.wrong_amount,
        r.failed,
        r.duplicates,
        r.refunds
    );
    println!(
        "answers: {}",
        report::answers(r.answers.iter().map(|(k, n)| (k, *n as u64)))
    );
    let all_ok = r.answers.keys().all(|k| k == "200");
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn flash_sale(config: &Config, args: FlashSaleArgs) -> anyhow::Result<ExitCode> {
    let wait_for_timeouts = !args.skip_timeouts && config.payment_timeout <= LONGEST_TIMEOUT_WAITED;
    if !args.skip_timeouts && !wait_for_timeouts {
        eprintln!(
            "SECKILL_PAYMENT_TIMEOUT_SECS is {}: unpaid orders are audited while they await payment",
            config.payment_timeout.as_secs()
        );
    }
    let (stock, per_user_limit) = args.shape()?;
    let fleet = match args.gateways {
        0 => None,
        gateways => {
            let fleet = Fleet::start(&FleetOptions {
                gateways,
                workers: args.workers,
                binaries: None,
                out: args.out.clone(),
                env: Vec::new(),
            })
            .await?;
            eprintln!(
                "started {gateways} gateways ({}) and {} workers behind HAProxy at {} (logs and \
                 haproxy.cfg in {})",
                fleet
                    .gateways
                    .iter()
                    .map(|g| g.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                args.workers,
                fleet.url(),
                args.out.display()
            );
            Some(fleet)
        }
    };
    let opts = SaleOptions {
        gateway: match &fleet {
            Some(f) => f.url(),
            None => args
                .gateway
                .unwrap_or_else(|| default_gateway(config))
                .trim_end_matches('/')
                .to_owned(),
        },
        stock,
        requests: args.requests,
        connections: args.connections,
        repeat_ratio: args.repeat_ratio,
        per_user_limit,
        price_cents: args.price_cents,
        pay_ratio: args.pay_ratio,
        faults: args.faults,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        wait_for_timeouts,
        baseline: args.baseline,
        alone: args.baseline.then_some(match args.profile {
            Profile::InStock => sale::Alone::InStock,
            Profile::SoldOut => sale::Alone::SoldOut,
        }),
        gateway_pid: match &fleet {
            Some(f) => f.gateways.first().and_then(|g| g.pid()),
            None => args.gateway_pid,
        },
        own: fleet.as_ref().map(Fleet::pids).unwrap_or_default(),
        shards: args.shards,
        out: args.out,
    };
    let r = sale::flash_sale(config, &opts).await;
    if let Some(fleet) = fleet {
        let trouble = fleet.stop().await;
        if trouble.is_empty() {
            eprintln!("stopped the gateways, the workers and HAProxy");
        } else {
            eprintln!("stopping the fleet: {}", trouble.join("; "));
        }
    }
    let r = r?;
    print!("{}", report::table(&r));
    write_report(&opts.out, &r)?;
    println!(
        "wrote {} and {}",
        opts.out.join("report.json").display(),
        opts.out.join("report.svg").display()
    );
    Ok(if r.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes `report.json`, `report.svg` and `report.txt` (the printed report, with the targets)
/// into `dir`.
fn write_report(dir: &Path, r: &Report) -> anyhow::Result<()> {
    report::write_json(&dir.join("report.json"), r)?;
    let path = dir.join("report.txt");
    std::fs::write(&path, report::table(r))
        .with_context(|| format!("writing {}", path.display()))?;
    let path = dir.join("report.svg");
    std::fs::write(&path, svg::render(r)).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
        assert!(fraction("0.5").is_ok());
        assert!(fraction("1.5").is_err());
        assert!(fraction("x").is_err());
    }

    #[test]
    fn profiles_shape_the_sale() {
        let shape = |args: &[&str]| match Cli::parse_from(args).command {
            Command::FlashSale(a) => a.shape().ok(),
            _ => unreachable!(),
        };
        let sale = ["seckill-bench", "flash-sale"];
        assert_eq!(
            shape(&[&sale[..], &["--stock", "100"]].concat()),
            Some((100, 1))
        );
        assert_eq!(shape(&sale), None, "a sold-out sale needs its stock");
        assert_eq!(
            shape(&[&sale[..], &["--profile", "in-stock", "-n", "20000"]].concat()),
            Some((40_000, 1000))
        );
    }

    #[test]
    fn a_sale_duplicates_a_tenth_of_its_callbacks_and_pay_none_by_default() {
        let faults = |args: &[&str]| match Cli::parse_from(args).command {
            Command::Pay(a) => a.faults,
            Command::FlashSale(a) => a.faults,
            Command::Baseline(_) | Command::ItemPage(_) | Command::Token(_) => unreachable!(),
        };
        let sale = faults(&["seckill-bench", "flash-sale", "--stock", "1"]);
        assert_eq!(
            sale,
            Faults {
                duplicates: 0.1,
                ..Faults::default()
            }
        );
        assert_eq!(faults(&["seckill-bench", "pay"]), Faults::default());
        let told = faults(&[
            "seckill-bench",
            "flash-sale",
            "--stock",
            "1",
            "--duplicates",
            "0",
            "--reorder",
            "--fail",
            "0.5",
        ]);
        assert_eq!(
            told,
            Faults {
                duplicates: 0.0,
                reorder: true,
                wrong_amount: 0.0,
                fail: 0.5,
            }
        );
        assert!(
            Cli::try_parse_from(["seckill-bench", "pay", "--duplicates", "2"]).is_err(),
            "a share above 1"
        );
    }
}
