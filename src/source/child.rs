//! Child-process handling shared by every dump and restore tool.
//!
//! Children run in their own process group (a terminal's Ctrl-C reaches only us, and we stop
//! them in order), are killed if dropped, die with backhaul even when it is SIGKILLed (Linux
//! parent-death signal), create their files private (umask 077), never inherit our
//! secret-bearing variables, and have their stderr drained concurrently, redacted, with the
//! last lines kept for errors.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::secret::Redactor;

/// Variables that hold secrets meant for backhaul itself. A child gets exactly the secret it
/// needs through its own channel (PGPASSWORD, a --config file), never these.
pub const SCRUBBED_ENV: &[&str] = &[
    "PG_DB_PASSWORD",
    "POSTGRES_SECRET",
    "DATABASE_URL",
    "MONGO_CONNECTION_STRING",
    "MONGO_SECRET",
    // Target URLs, which may carry a password.
    "RESTORE_TO",
    "VERIFY_RESTORE_INTO",
    "BACKUP_VERIFY_INTO",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "BACKHAUL_NOTIFY_URL",
];

const TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot start {tool} ({path}): {source}")]
    Spawn {
        tool: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{tool} {status}{}", tail_suffix(.tail))]
    Failed {
        tool: String,
        status: String,
        tail: Vec<String>,
    },
    #[error("waiting for {tool}: {source}")]
    Wait {
        tool: String,
        source: std::io::Error,
    },
}

fn tail_suffix(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {}", tail.join(" | "))
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended abnormally".to_string(),
    }
}

/// Prepares a command with the hygiene every child gets. Start it with [`ChildProc::spawn`] or
/// [`output`], never `Command::spawn` directly (see [`spawn`]).
pub fn command(program: &std::path::Path) -> Command {
    let mut cmd = Command::new(program);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs in the forked child before exec; umask, prctl, getppid and _exit are
    // async-signal-safe and touch no memory of ours.
    unsafe {
        cmd.pre_exec(move || {
            // A dump tree or a list file the tool writes is for us only.
            libc::umask(0o077);
            // SIGKILL when the forking thread ends: every fork happens on the spawner
            // thread, which lives as long as the process, so this means "when backhaul dies".
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // backhaul died between fork and prctl: the signal will never come.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd
}

/// A unit of work for the spawner thread.
type SpawnJob = Box<dyn FnOnce() + Send>;

/// Runs `f` on the one thread that forks every child. The parent-death signal fires when the
/// thread that forked exits, not the process: a child forked on one of tokio's blocking
/// threads (they end after idling) would be killed mid-dump. This thread never ends.
fn on_spawner<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("backhaul-spawner".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .expect("starting the spawner thread");
        Mutex::new(tx)
    });
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    let job: SpawnJob = Box::new(move || {
        let _ = done_tx.send(f());
    });
    sender
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .expect("the spawner thread lives as long as the process");
    done_rx
        .recv()
        .expect("the spawner thread lives as long as the process")
}

/// Starts `cmd` on the spawner thread (registered with the caller's runtime).
pub fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    let rt = tokio::runtime::Handle::current();
    on_spawner(move || {
        let _entered = rt.enter();
        cmd.spawn()
    })
}

/// As `Command::output`, forked on the spawner thread: waits and collects stdout and stderr.
pub async fn output(cmd: Command) -> std::io::Result<std::process::Output> {
    spawn(cmd)?.wait_with_output().await
}

pub struct ChildProc {
    tool: String,
    /// Always `Some` until `Drop`, which may hand a still-running child to [`crate::cleanup`].
    child: Option<Child>,
    stderr: Option<JoinHandle<(Vec<String>, Vec<String>)>>,
}

impl ChildProc {
    pub fn spawn(tool: &str, cmd: Command, redactor: Redactor) -> Result<ChildProc, ChildError> {
        ChildProc::spawn_keeping(tool, cmd, redactor, |_| false)
    }

    /// As [`ChildProc::spawn`], and every (redacted) stderr line for which `keep` is true is
    /// kept in full, for tools whose per-item log lines are the only report of what they did.
    pub fn spawn_keeping(
        tool: &str,
        cmd: Command,
        redactor: Redactor,
        keep: fn(&str) -> bool,
    ) -> Result<ChildProc, ChildError> {
        let path = format!("{:?}", cmd.as_std().get_program());
        let mut child = spawn(cmd).map_err(|source| ChildError::Spawn {
            tool: tool.to_string(),
            path,
            source,
        })?;
        let stderr = child.stderr.take().map(|err| {
            let tool = tool.to_string();
            tokio::spawn(async move {
                let mut tail = VecDeque::with_capacity(TAIL_LINES);
                let mut kept = Vec::new();
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = redactor.redact(line.trim_end());
                    if line.is_empty() {
                        continue;
                    }
                    tracing::debug!(tool = %tool, "{line}");
                    if keep(&line) {
                        kept.push(line.clone());
                    }
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                (tail.into_iter().collect(), kept)
            })
        });
        Ok(ChildProc {
            tool: tool.to_string(),
            child: Some(child),
            stderr,
        })
    }

    fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the child is only taken on drop")
    }

    /// The child's stdout as a blocking file, for a producer thread.
    pub fn take_stdout(&mut self) -> Option<std::fs::File> {
        let out = self.child().stdout.take()?;
        let fd = out.into_owned_fd().ok()?;
        Some(widened(fd))
    }

    /// The child's stdout for reading on the runtime (short answers, not a data stream).
    pub fn take_async_stdout(&mut self) -> Option<tokio::process::ChildStdout> {
        self.child().stdout.take()
    }

    pub fn take_stdin(&mut self) -> Option<tokio::process::ChildStdin> {
        self.child().stdin.take()
    }

    /// The child's stdin as a plain blocking file, for a feeder on a blocking thread (the
    /// archive is decoded and hashed there, off the async runtime).
    pub fn take_stdin_file(&mut self) -> Option<std::fs::File> {
        self.take_stdin()
            .and_then(|s| s.into_owned_fd().ok())
            .map(widened)
    }

    /// Waits for the child; a non-zero exit becomes an error carrying its redacted stderr tail.
    pub async fn wait(self) -> Result<Vec<String>, ChildError> {
        Ok(self.wait_keeping().await?.0)
    }

    /// As [`ChildProc::wait`], returning the tail and the lines kept by `spawn_keeping`.
    pub async fn wait_keeping(mut self) -> Result<(Vec<String>, Vec<String>), ChildError> {
        let status = self
            .child()
            .wait()
            .await
            .map_err(|source| ChildError::Wait {
                tool: self.tool.clone(),
                source,
            })?;
        let (tail, kept) = match self.stderr.take() {
            Some(h) => h.await.unwrap_or_default(),
            None => Default::default(),
        };
        if status.success() {
            Ok((tail, kept))
        } else {
            Err(ChildError::Failed {
                tool: self.tool.clone(),
                status: describe(status),
                tail,
            })
        }
    }

    /// The child's pid, which is also its process group's id; `None` once it was reaped.
    pub fn pid(&mut self) -> Option<u32> {
        self.child().id()
    }

    /// Stops the child: SIGTERM to its group, then SIGKILL to the group if it lingers.
    pub async fn terminate(mut self) -> Result<Vec<String>, ChildError> {
        if let Some(pid) = self.child().id() {
            signal_group(pid, libc::SIGTERM);
            // A group paused with SIGSTOP (a full spool) would act on SIGTERM only when
            // continued.
            signal_group(pid, libc::SIGCONT);
            let stopped = self.child().wait();
            if tokio::time::timeout(std::time::Duration::from_secs(2), stopped)
                .await
                .is_err()
            {
                signal_group(pid, libc::SIGKILL);
            }
        }
        self.wait().await
    }
}

pub fn signal_group(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a process group we created; no memory is touched.
    unsafe {
        libc::kill(-(pid as i32), signal);
    }
}

impl Drop for ChildProc {
    /// `kill_on_drop` kills only the direct child; the whole group goes, so helpers a tool
    /// may have forked do not outlive us. The child is then reaped in the background, and main
    /// waits for that before exiting (see [`crate::cleanup`]).
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            if let Some(pid) = child.id() {
                signal_group(pid, libc::SIGKILL);
            }
            crate::cleanup::defer("reaping a killed child process", async move {
                let _ = child.wait().await;
            });
        }
    }
}

/// A 64 KiB pipe makes the tool and our side take turns every 64 KiB; 1 MiB lets both run
/// for longer stretches. Best effort: a lower system limit just keeps the default.
fn widened(fd: std::os::fd::OwnedFd) -> std::fs::File {
    // SAFETY: fcntl on a pipe fd we own; no memory is passed.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
    std::fs::File::from(fd)
}
