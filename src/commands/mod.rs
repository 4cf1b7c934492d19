//! One module per subcommand. Commands turn CLI arguments into validated config (exit 2 on
//! error, before any side effect), then drive sources, the pipeline and storage.

pub mod backup;
pub mod common;
pub mod list;
pub mod logs;
mod preflight;
pub mod prune;
pub mod restore;
pub mod run_task;
pub mod schedule;
pub mod status;
pub mod verify;

use tokio_util::sync::CancellationToken;

/// A failure that was already reported (per-target summary lines), so `main` only sets the
/// exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Reported(pub String);

/// `logs`, `status` and `run-task` on a stage that has no task definition, rule or
/// time-zone schedule: one line saying so (instead of an ECS error about a missing cluster),
/// and the command that sets the stage up.
#[derive(Debug, thiserror::Error)]
#[error("nothing is scheduled for stage {0}; `backhaul schedule --stage {0} …` (or `--from-stack <stack>`) sets it up, see `backhaul schedule -h`")]
pub struct NotScheduled(pub String);

/// The run was stopped by a signal; `main` exits with 128 + signal.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Shared by every command: the cancellation token signals flip.
#[derive(Clone)]
pub struct Runtime {
    pub cancel: CancellationToken,
}
