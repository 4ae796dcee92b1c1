//! How a seckill process lives: its start-up from the environment ([`main`]), the one shutdown
//! signal every background job watches ([`Shutdown`]), and the one loop of a job that runs every
//! so often until then ([`Every`]).

use crate::Config;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

/// What a process's background jobs watch: asked once by its [`Stopper`] (or when the stopper is
/// dropped), seen by every clone.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// Asks a process's background jobs to stop.
#[derive(Debug)]
pub struct Stopper(watch::Sender<bool>);

impl Shutdown {
    /// A new signal and the stopper that gives it.
    pub fn new() -> (Stopper, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Stopper(tx), Shutdown(rx))
    }

    /// Has the stop been asked?
    pub fn is_asked(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Completes once the stop is asked (at once if it was).
    pub async fn asked(&mut self) {
        // An error means the stopper is gone, which asks too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Runs `work` unless the stop is asked first: `None` then, and `work` is dropped.
    pub async fn unless_asked<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            _ = self.asked() => None,
            out = work => Some(out),
        }
    }
}

impl Stopper {
    /// Asks every job watching this stopper's [`Shutdown`] to stop.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// Another [`Shutdown`] of this stopper.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

/// The loop of a job that runs every so often until the stop is asked:
///
/// ```ignore
/// let mut every = Every::new(Duration::from_secs(1), shutdown);
/// while every.tick().await {
///     // one pass
/// }
/// ```
///
/// A pass that overran its period is followed by the next one a whole period later, not by a
/// burst of catch-up passes.
pub struct Every {
    interval: Interval,
    shutdown: Shutdown,
}

impl Every {
    /// The first tick after one period.
    pub fn new(period: Duration, shutdown: Shutdown) -> Every {
        let period = period.max(Duration::from_millis(1));
        Every::starting(tokio::time::Instant::now() + period, period, shutdown)
    }

    /// The first tick at once.
    pub fn now(period: Duration, shutdown: Shutdown) -> Every {
        let period = period.max(Duration::from_millis(1));
        Every::starting(tokio::time::Instant::now(), period, shutdown)
    }

    fn starting(start: tokio::time::Instant, period: Duration, shutdown: Shutdown) -> Every {
        let mut interval = tokio::time::interval_at(start, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Every { interval, shutdown }
    }

    /// Waits for the next tick: `true` to run a pass, `false` once the stop is asked.
    pub async fn tick(&mut self) -> bool {
        if self.shutdown.is_asked() {
            return false;
        }
        tokio::select! {
            _ = self.interval.tick() => !self.shutdown.is_asked(),
            _ = self.shutdown.asked() => false,
        }
    }

    /// Makes the next tick come one whole period from now.
    pub fn reset(&mut self) {
        self.interval.reset();
    }

    /// The shutdown this loop watches, for a pass to race its own work against.
    pub fn shutdown(&mut self) -> &mut Shutdown {
        &mut self.shutdown
    }
}

/// What a seckill binary runs: built from the configuration, then run until a shutdown signal.
pub trait Service: Sized {
    /// What the start-up log calls it; its binary is `seckill-<NAME>`.
    const NAME: &'static str;

    /// What its binary's `--help` says.
    const ABOUT: &'static str;

    /// Connects to what it needs and binds its listener.
    fn build(config: Config) -> impl Future<Output = anyhow::Result<Self>>;

    /// Serves until `shutdown` completes, then finishes what is in flight.
    fn run(self, shutdown: impl Future<Output = ()>) -> impl Future<Output = anyhow::Result<()>>;
}

/// The start-up both binaries share: a command line of `--help` and `--version` only, logs, the
/// configuration from `SECKILL_*`, the service built and run until SIGINT or SIGTERM.
pub async fn main<S: Service>() -> anyhow::Result<()> {
    // The workspace's version, which every crate shares.
    clap::Command::new(format!("seckill-{}", S::NAME))
        .version(env!("CARGO_PKG_VERSION"))
        .about(S::ABOUT)
        .get_matches();
    crate::telemetry::init_tracing();
    let config = Config::from_env()?;
    tracing::info!(?config, service = S::NAME, "starting");
    // Boxed: the services' futures are deep types, and the binary's `main` need not nest them.
    let service = Box::pin(S::build(config)).await?;
    Box::pin(service.run(crate::telemetry::shutdown_signal())).await?;
    tracing::info!(service = S::NAME, "stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_ticks_each_period_until_the_stop_is_asked() {
        let (stopper, shutdown) = Shutdown::new();
        let mut every = Every::new(Duration::from_secs(1), shutdown.clone());
        let start = tokio::time::Instant::now();
        assert!(every.tick().await);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert!(every.tick().await);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // A stop asked while waiting ends the wait at once.
        let waiting = tokio::spawn(async move { every.tick().await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        stopper.stop();
        assert!(!waiting.await.unwrap());
        assert!(shutdown.is_asked());
        assert_eq!(start.elapsed(), Duration::from_millis(2300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_stopper_asks_too_and_now_ticks_at_once() {
        let (stopper, shutdown) = Shutdown::new();
        let mut every = Every::now(Duration::from_secs(60), shutdown.clone());
        let start = tokio::time::Instant::now();
        assert!(every.tick().await);
        assert_eq!(start.elapsed(), Duration::ZERO);
        drop(stopper);
        assert!(shutdown.is_asked());
        assert!(!every.tick().await);
        let mut other = shutdown.clone();
        assert_eq!(other.unless_asked(async { 1 }).await.map(|_| ()), None);
    }
}
