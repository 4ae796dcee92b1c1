//! hyper's timer, one per connection, for the header-read timeout.
//!
//! hyper arms a new timer for every request head it waits for and drops it once the head is in.
//! With `hyper_util`'s `TokioTimer` that is, per request, a boxed tokio `Sleep` (a runtime handle
//! cloned and dropped), a lock of the time driver to put it on the wheel and another to take it
//! off: about 3 % of the gateway's CPU on the sold-out path, measured. A head arrives within
//! microseconds, and the timeout is seconds; it needs a wake-up only for the rare connection
//! that stalls. So each connection gets one [`Slot`], registered once, holding the deadline of
//! its current head read and the waker of its task; a sweeper wakes, a few times a second, every
//! connection whose deadline passed. Arming a timer is then two atomic stores, and the deadline
//! is read on a coarse clock the sweeper keeps: [`TICK`] late at most, against seconds of
//! timeout. No crate offers this for hyper's `Timer` trait.

use futures_util::task::AtomicWaker;
use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioTimer;
use seckill_infra::lifecycle::{Every, Shutdown};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How often the sweeper advances the clock and wakes what expired.
pub const TICK: Duration = Duration::from_millis(100);

/// The sweeper's registry and clock, shared by every connection's timer.
pub struct Deadlines {
    base: Instant,
    /// Milliseconds since `base`, as of the last tick.
    now_ms: AtomicU64,
    slots: Mutex<Vec<Weak<Slot>>>,
}

/// One connection's timer state.
struct Slot {
    deadlines: Arc<Deadlines>,
    /// The armed deadline, in milliseconds since `base`; 0 when none is armed.
    deadline_ms: AtomicU64,
    waker: AtomicWaker,
    /// Whether a [`ConnSleep`] owns the slot; a second sleep falls back to a tokio one.
    taken: AtomicBool,
}

impl Deadlines {
    pub fn new() -> Arc<Self> {
        Arc::new(Deadlines {
            base: now(),
            now_ms: AtomicU64::new(0),
            slots: Mutex::new(Vec::new()),
        })
    }

    /// A timer for one new connection.
    pub fn timer(self: &Arc<Self>) -> ConnTimer {
        let slot = Arc::new(Slot {
            deadlines: self.clone(),
            deadline_ms: AtomicU64::new(0),
            waker: AtomicWaker::new(),
            taken: AtomicBool::new(false),
        });
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&slot));
        ConnTimer { slot }
    }

    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    fn ms_of(&self, at: Instant) -> u64 {
        // At least 1: 0 means "none armed".
        (at.saturating_duration_since(self.base).as_millis() as u64).max(1)
    }

    /// Advances the clock and wakes every connection whose deadline passed; forgets closed ones.
    fn sweep(&self) {
        let now = self.ms_of(now());
        self.now_ms.store(now, Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|weak| {
            let Some(slot) = weak.upgrade() else {
                return false;
            };
            let deadline = slot.deadline_ms.load(Ordering::Acquire);
            if deadline != 0 && deadline <= now {
                slot.waker.wake();
            }
            true
        });
    }

    /// Sweeps every [`TICK`] until `stop` turns true.
    pub async fn run(self: Arc<Self>, stop: Shutdown) {
        let mut ticks = Every::now(TICK, stop);
        while ticks.tick().await {
            self.sweep();
        }
    }
}

/// tokio's clock (the same as std's, except in tests, where it can be paused).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// hyper's [`Timer`] for one connection.
pub struct ConnTimer {
    slot: Arc<Slot>,
}

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        if self.slot.taken.swap(true, Ordering::AcqRel) {
            // hyper's HTTP/1 server holds one timer at a time; anything else gets a tokio one.
            return TokioTimer::new().sleep_until(deadline);
        }
        let deadline_ms = self.slot.deadlines.ms_of(deadline);
        self.slot.deadline_ms.store(deadline_ms, Ordering::Release);
        Box::pin(ConnSleep {
            // The connection's own count, not a shared one: no cache line bounces between threads.
            slot: self.slot.clone(),
            deadline_ms,
        })
    }

    /// The sweeper's clock: a deadline seconds away needs no fresher one.
    fn now(&self) -> Instant {
        let deadlines = &self.slot.deadlines;
        deadlines.base + Duration::from_millis(deadlines.now_ms())
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        if let Some(mut own) = sleep.as_mut().downcast_mut_pin::<ConnSleep>() {
            let deadline_ms = self.slot.deadlines.ms_of(new_deadline);
            own.deadline_ms = deadline_ms;
            own.slot.deadline_ms.store(deadline_ms, Ordering::Release);
        } else {
            *sleep = self.sleep_until(new_deadline);
        }
    }
}

/// The armed deadline of a connection's [`Slot`].
struct ConnSleep {
    slot: Arc<Slot>,
    deadline_ms: u64,
}

impl Future for ConnSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot.deadlines.now_ms() >= self.deadline_ms {
            return Poll::Ready(());
        }
        // A sweep between the check and this registration wakes it at the next tick.
        self.slot.waker.register(cx.waker());
        Poll::Pending
    }
}

impl Sleep for ConnSleep {}

impl Drop for ConnSleep {
    fn drop(&mut self) {
        self.slot.deadline_ms.store(0, Ordering::Release);
        self.slot.taken.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deadlines with their sweeper running until the stopper drops.
    fn swept() -> (Arc<Deadlines>, seckill_infra::lifecycle::Stopper) {
        let deadlines = Deadlines::new();
        let (stopper, shutdown) = Shutdown::new();
        tokio::spawn(deadlines.clone().run(shutdown));
        (deadlines, stopper)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_read_is_woken_after_its_deadline_and_not_before() {
        let (deadlines, _stop) = swept();
        let timer = deadlines.timer();
        let started = tokio::time::Instant::now();
        timer.sleep(Duration::from_secs(2)).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(2), "woke after {waited:?}");
        assert!(
            waited <= Duration::from_secs(2) + 2 * TICK,
            "woke after {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_moves_the_deadline() {
        let (deadlines, _stop) = swept();
        let timer = deadlines.timer();
        let started = tokio::time::Instant::now();
        let mut sleep = timer.sleep(Duration::from_secs(1));
        timer.reset(&mut sleep, timer.now() + Duration::from_secs(3));
        sleep.await;
        assert!(started.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_sleep_of_one_connection_still_fires() {
        let (deadlines, _stop) = swept();
        let timer = deadlines.timer();
        let first = timer.sleep(Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        timer.sleep(Duration::from_secs(1)).await;
        assert!(started.elapsed() < Duration::from_secs(60));
        drop(first);
        // The slot is free again, and closed connections' slots are forgotten at the next sweep.
        let again = timer.sleep(Duration::from_millis(300));
        drop(timer);
        again.await;
    }

    #[tokio::test(start_paused = true)]
    async fn closed_connections_leave_the_registry() {
        let deadlines = Deadlines::new();
        let timers: Vec<_> = (0..10).map(|_| deadlines.timer()).collect();
        drop(timers);
        deadlines.sweep();
        assert!(deadlines.slots.lock().unwrap().is_empty());
    }
}
