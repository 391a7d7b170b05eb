//! Background workers: one abstraction for every loop a node runs (gossip,
//! hint delivery, expiry, tombstone purge, and later anti-entropy and
//! transfers), after Garage's `Worker`.
//!
//! A [`Worker`] has a name, does one unit of work per [`Worker::work`] call
//! (never interrupted: shutdown waits for it, with a deadline), and waits
//! for more in [`Worker::wait_for_work`] (cut at any time). [`spawn`] runs
//! it under the node's `TaskTracker` with a child cancellation token, keeps
//! its status in a [`Registry`], and backs off exponentially after errors so
//! a failing worker neither spins nor stops for good.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a unit of work says about the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// More to do right away.
    Busy,
    /// Nothing to do until [`Worker::wait_for_work`] returns.
    Idle,
    /// Finished for good.
    Done,
}

/// A failed unit of work.
pub type WorkError = Box<dyn std::error::Error + Send + Sync>;

/// One background loop.
pub trait Worker: Send + 'static {
    /// A short, fixed name (a metric label).
    fn name(&self) -> &'static str;

    /// Does one unit of work.
    fn work(&mut self) -> impl Future<Output = Result<State, WorkError>> + Send;

    /// Waits until there may be work again (a tick, a signal). May be cut
    /// short at any time.
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send;

    /// One line on what the worker is doing, if it has more to say than its
    /// state.
    fn status(&self) -> Option<String> {
        None
    }
}

/// What the registry knows of one worker.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// `busy`, `idle`, `backoff` or `done`.
    pub state: &'static str,
    /// Units of work done.
    pub iterations: u64,
    /// Units of work that failed.
    pub errors: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// The worker's own status line.
    pub detail: Option<String>,
}

/// Every worker's status, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<Mutex<BTreeMap<&'static str, Status>>>);

impl Registry {
    /// A snapshot of every worker's status.
    pub fn snapshot(&self) -> BTreeMap<&'static str, Status> {
        self.0.lock().expect("registry lock").clone()
    }

    fn set(&self, name: &'static str, f: impl FnOnce(&mut Status)) {
        f(self.0.lock().expect("registry lock").entry(name).or_default());
    }
}

/// First pause after an error; doubled per consecutive error.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest pause after errors.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Runs `worker` under `tasks` until `cancel` fires or it is done.
pub fn spawn<W: Worker>(mut worker: W, tasks: &TaskTracker, cancel: CancellationToken, registry: Registry) {
    let name = worker.name();
    registry.set(name, |s| s.state = "idle");
    tasks.spawn(async move {
        let mut backoff = BACKOFF_START;
        loop {
            if cancel.is_cancelled() {
                break;
            }
            registry.set(name, |s| s.state = "busy");
            let started = Instant::now();
            let result = worker.work().await;
            let detail = worker.status();
            match result {
                Ok(state) => {
                    backoff = BACKOFF_START;
                    registry.set(name, |s| {
                        s.iterations += 1;
                        s.detail = detail;
                        s.state = match state {
                            State::Busy => "busy",
                            State::Idle => "idle",
                            State::Done => "done",
                        };
                    });
                    match state {
                        State::Busy => tokio::task::yield_now().await,
                        State::Idle => {
                            tokio::select! {
                                _ = cancel.cancelled() => break,
                                _ = worker.wait_for_work() => {}
                            }
                        }
                        State::Done => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = name, error = %e, took = ?started.elapsed(), retry_in = ?backoff, "worker failed");
                    registry.set(name, |s| {
                        s.iterations += 1;
                        s.errors += 1;
                        s.last_error = Some(e.to_string());
                        s.detail = detail;
                        s.state = "backoff";
                    });
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        registry.set(name, |s| s.state = "done");
    });
}

/// An interval that waits for the period after each unit of work (missed
/// ticks are delayed, never bunched), for workers that run on a timer.
pub fn ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails twice, then counts to three and is done.
    struct Flaky {
        calls: Arc<AtomicU32>,
    }

    impl Worker for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }

        async fn work(&mut self) -> Result<State, WorkError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            match n {
                1 | 2 => Err("not yet".into()),
                3 | 4 => Ok(State::Idle),
                _ => Ok(State::Done),
            }
        }

        async fn wait_for_work(&mut self) {}
    }

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_and_the_worker_carries_on_until_done() {
        let calls = Arc::new(AtomicU32::new(0));
        let tasks = TaskTracker::new();
        let registry = Registry::default();
        let started = tokio::time::Instant::now();
        spawn(Flaky { calls: calls.clone() }, &tasks, CancellationToken::new(), registry.clone());
        tasks.close();
        tasks.wait().await;
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        // Two back-offs: 100 ms then 200 ms (paused time advances exactly).
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        let s = &registry.snapshot()["flaky"];
        assert_eq!((s.state, s.iterations, s.errors), ("done", 5, 2));
        assert_eq!(s.last_error.as_deref(), Some("not yet"));
    }

    struct Forever;

    impl Worker for Forever {
        fn name(&self) -> &'static str {
            "forever"
        }

        async fn work(&mut self) -> Result<State, WorkError> {
            Ok(State::Idle)
        }

        async fn wait_for_work(&mut self) {
            std::future::pending::<()>().await
        }
    }

    #[tokio::test]
    async fn cancellation_cuts_the_wait() {
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let registry = Registry::default();
        spawn(Forever, &tasks, cancel.child_token(), registry.clone());
        tasks.close();
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await.expect("stopped");
        assert_eq!(registry.snapshot()["forever"].state, "done");
    }
}
