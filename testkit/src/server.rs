//! A server of a test's own (the gateway's `Application`, the `Workers`) running on a task until
//! the test stops it. Both take the future that ends them, `run(shutdown)`; this hands them one
//! and keeps its trigger.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Completes when the test stops the server, or drops its [`ServerTask`].
pub struct Shutdown(oneshot::Receiver<()>);

impl Future for Shutdown {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A dropped sender completes it too: a test that panics does not leave servers running.
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// A spawned `run(shutdown)`; dropping it starts the shutdown without waiting for it.
pub struct ServerTask<T> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<T>,
}

impl<T: Send + 'static> ServerTask<T> {
    /// Spawns `run`, given the [`Shutdown`] that [`ServerTask::stop`] completes.
    pub fn spawn<F>(run: impl FnOnce(Shutdown) -> F) -> ServerTask<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        ServerTask {
            stop,
            task: tokio::spawn(run(Shutdown(stopped))),
        }
    }

    /// Starts the shutdown and hands back the task, for a test that waits on it its own way.
    pub fn stop_later(self) -> JoinHandle<T> {
        let _ = self.stop.send(());
        self.task
    }

    /// Starts the shutdown and waits for `run` to return.
    pub async fn stop(self) -> T {
        self.stop_later()
            .await
            .expect("the server's task does not panic")
    }
}
