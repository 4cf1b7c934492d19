//! One psql kept open for repeated small queries, such as the restore's lock watcher asking
//! every two seconds. A psql per query costs a new connection each time: a fork and an
//! authentication on the server (about 25 ms of CPU on a local server, more through a TLS
//! proxy such as Neon's), taken from the restore being watched, and a connect/disconnect
//! pair in the server's log every poll.
//!
//! psql reads the statements from its stdin and flushes each result; after every statement
//! it is asked to `\echo` a marker line, which ends that statement's rows. With
//! `ON_ERROR_STOP` a failed statement ends psql, so the session is then gone and its error
//! is psql's own, redacted like every child's stderr.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};

use crate::config::postgres::PgConn;
use crate::secret::Redactor;
use crate::source::child::{self, ChildError, ChildProc};
use crate::source::postgres::{connect_args, PgError, PgTools, ANSWER_FLAGS};

pub struct PsqlSession {
    /// `None` once psql has ended and been reaped.
    child: Option<ChildProc>,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Ends each statement's output. No row of a query with more than one column can equal
    /// it (unaligned rows hold `|`); the process id and time keep one-column rows off it too.
    marker: String,
}

impl PsqlSession {
    /// Starts psql on `database`. It connects at once; a connection failure shows as the first
    /// query's error.
    pub fn open(
        tools: &PgTools,
        conn: &PgConn,
        database: &str,
        redactor: Redactor,
    ) -> Result<PsqlSession, PgError> {
        let mut cmd = child::command(&tools.sibling("psql"));
        cmd.args(ANSWER_FLAGS).args(["-f", "-"]);
        connect_args(&mut cmd, conn, database);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = ChildProc::spawn("psql", cmd, redactor)?;
        let stdin = child.take_stdin().expect("stdin is piped");
        let stdout = child.take_async_stdout().expect("stdout is piped");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Ok(PsqlSession {
            child: Some(child),
            stdin,
            stdout: BufReader::new(stdout).lines(),
            marker: format!("--backhaul-end-{}-{nanos}--", std::process::id()),
        })
    }

    /// Runs one statement (no trailing `;`) and returns its rows in psql's unaligned form,
    /// one per line. On an error the session is over: the caller drops it and may open
    /// another.
    pub async fn query(&mut self, sql: &str) -> Result<String, PgError> {
        let script = format!("{};\n\\echo {}\n", sql.trim_end(), self.marker);
        let sent = self.stdin.write_all(script.as_bytes()).await;
        let mut rows = String::new();
        if sent.is_ok() {
            while let Ok(Some(line)) = self.stdout.next_line().await {
                if line == self.marker {
                    return Ok(rows.trim_end().to_string());
                }
                rows.push_str(&line);
                rows.push('\n');
            }
        }
        // psql ended (ON_ERROR_STOP, a lost connection): its stderr says why.
        Err(self.ended().await)
    }

    async fn ended(&mut self) -> PgError {
        let status = match self.child.take() {
            Some(proc) => proc.wait().await,
            None => Ok(Vec::new()),
        };
        match status {
            Err(e) => e.into(),
            Ok(tail) => ChildError::Failed {
                tool: "psql".into(),
                status: "ended the session".into(),
                tail,
            }
            .into(),
        }
    }

    /// Ends the session the way a client should: psql sees the end of its input, closes the
    /// connection and exits. One that does not exit promptly is killed.
    pub async fn close(self) {
        let PsqlSession { child, stdin, .. } = self;
        drop(stdin);
        if let Some(child) = child {
            // On timeout the dropped child is killed with its group (`ChildProc`'s drop).
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), child.wait()).await;
        }
    }
}
