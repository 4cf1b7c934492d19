//! Clean-up work started from `Drop` (killing a child, aborting a multipart upload) that must
//! finish before backhaul exits.
//!
//! `Drop` cannot await, so it spawns a task; a task the runtime drops at shutdown is a child
//! that outlives us still holding its snapshot, or a multipart upload left for the lifecycle
//! rule. main awaits everything deferred here, bounded, before it returns.
//!
//! Work that runs in spawned tasks (each backup target, each parallel-restore worker) is
//! wrapped with [`tracked`]: when main gives up after its shutdown grace and drops the command,
//! those tasks are only *told* to stop, and their futures (with the uploads and children whose
//! `Drop` defers clean-up here) are dropped later, on a worker thread. `finish` waits for them
//! first, or it would find nothing deferred yet and let the process exit with an upload open.

use std::future::Future;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

static PENDING: Mutex<Vec<(&'static str, JoinHandle<()>)>> = Mutex::new(Vec::new());

static TASKS: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// Marks a future that will be spawned: `finish` waits until it has completed or been dropped.
pub fn tracked<F: Future>(work: F) -> impl Future<Output = F::Output> {
    TASKS.track_future(work)
}

/// Runs `work` in the background and has main wait for it before exiting. Outside a runtime
/// (nothing could run it) this does nothing: the caller's synchronous part is all there is.
pub fn defer(what: &'static str, work: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let handle = rt.spawn(work);
        PENDING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((what, handle));
    }
}

/// Waits, at most `limit` in all, for every deferred clean-up, warning about those still
/// unfinished. Work deferred while this waits (a drop inside a deferred task) is waited for too.
pub async fn finish(limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    TASKS.close();
    if tokio::time::timeout_at(deadline, TASKS.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "backhaul stopped before {} stopped task(s) let go of their work",
            TASKS.len()
        );
    }
    TASKS.reopen();
    loop {
        let pending = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return;
        }
        for (what, handle) in pending {
            if tokio::time::timeout_at(deadline, handle).await.is_err() {
                tracing::warn!("backhaul stopped before this clean-up finished: {what}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// The pending list is global: a test's `finish` would take (and time out on) the other
    /// test's work, so these two run one at a time.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn finish_waits_for_deferred_work() {
        let _one_at_a_time = SERIAL.lock().await;
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        defer("test", async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
        });
        finish(Duration::from_secs(5)).await;
        assert!(done.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn finish_gives_up_at_the_limit_not_before() {
        let _one_at_a_time = SERIAL.lock().await;
        defer("never", std::future::pending());
        let started = tokio::time::Instant::now();
        finish(Duration::from_millis(100)).await;
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
