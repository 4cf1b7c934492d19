//! A restore that waits on another session's lock says so, and gives up when the wait
//! passes `--lock-timeout`.
//!
//! The timeout cannot be left to PostgreSQL's `lock_timeout`: pg_restore itself sends
//! `SET lock_timeout = 0` before restoring (as every dump script does), overriding anything
//! set for the session. So this watcher asks the server every few seconds (over one psql
//! session kept for the whole restore, not a connection per question) which of our
//! sessions waits on which relation and which session holds it, logs it, and cancels our
//! waiting statement (`pg_cancel_backend`) once it has waited longer than the timeout; the
//! restore then fails like any failed statement (one transaction: nothing committed).
//! Without it a `restore --clean` behind an idle-in-transaction session waits silently.

use std::future::Future;
use std::time::Duration;

use crate::commands::restore::PgTarget;
use crate::source::psql_session::PsqlSession;

/// How often the server is asked; also the resolution of the timeout.
const POLL: Duration = Duration::from_secs(2);
/// First report: early enough to be seen, late enough that an ordinary short wait stays quiet.
const FIRST_REPORT: Duration = Duration::from_secs(3);
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Our sessions (application `backhaul`, this database, not the watcher itself) that wait for
/// a lock, with how long the statement has waited, what it waits on and who blocks it. Query
/// text is left out: it may hold data the log should not.
const WAITS_SQL: &str = "select a.pid, coalesce(extract(epoch from now() - a.query_start)::bigint, 0), coalesce(l.relation::regclass::text, l.locktype), l.mode, b.pid, coalesce(b.usename, ''), coalesce(b.application_name, ''), coalesce(b.state, ''), coalesce(extract(epoch from now() - b.xact_start)::bigint::text, '') from pg_stat_activity a join pg_locks l on l.pid = a.pid and not l.granted cross join lateral unnest(pg_blocking_pids(a.pid)) as bp(pid) join pg_stat_activity b on b.pid = bp.pid where a.datname = current_database() and a.application_name = 'backhaul' and a.pid <> pg_backend_pid() order by 1, 5";

/// The restore was stopped because a lock wait passed `--lock-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("{relation} stayed locked by session {holder} for longer than --lock-timeout {limit}: end that session or raise --lock-timeout")]
pub struct LockTimeout {
    relation: String,
    holder: String,
    limit: String,
}

struct Wait {
    waiter: String,
    waited: u64,
    relation: String,
    mode: String,
    holder: String,
    user: String,
    app: String,
    state: String,
    open: String,
}

/// Runs `work`, reporting lock waits on `target` while it runs and cancelling a wait that
/// passes `timeout`.
pub async fn watch<T>(
    target: &PgTarget,
    timeout: Option<Duration>,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::pin!(work);
    let start = tokio::time::Instant::now();
    let mut next_poll = start + POLL;
    let mut next_report = start + FIRST_REPORT;
    let mut cancelled: Option<LockTimeout> = None;
    let mut session = Session::default();
    loop {
        tokio::select! {
            r = &mut work => {
                session.close().await;
                return match (r, cancelled) {
                    (Err(e), Some(t)) => Err(e.context(t)),
                    (r, _) => r,
                };
            }
            _ = tokio::time::sleep_until(next_poll) => {
                next_poll += POLL;
                let waits = waits(&mut session, target).await;
                let now = tokio::time::Instant::now();
                if !waits.is_empty() && now >= next_report {
                    next_report = now + REPORT_EVERY;
                    for w in &waits {
                        log(w, timeout);
                    }
                }
                if cancelled.is_some() {
                    continue;
                }
                let Some(limit) = timeout else { continue };
                if let Some(w) = waits.iter().find(|w| Duration::from_secs(w.waited) >= limit) {
                    log(w, timeout);
                    let _ = session.query(target, &format!("select pg_cancel_backend({})", w.waiter)).await;
                    cancelled = Some(LockTimeout {
                        relation: w.relation.clone(),
                        holder: w.holder.clone(),
                        limit: humantime::format_duration(limit).to_string(),
                    });
                }
            }
        }
    }
}

/// The watcher's own psql, opened at the first poll and kept for the restore (see
/// [`PsqlSession`]). After a failure or a slow answer it is dropped, and the next poll opens
/// another.
#[derive(Default)]
struct Session(Option<PsqlSession>);

impl Session {
    async fn query(&mut self, target: &PgTarget, sql: &str) -> anyhow::Result<String> {
        let session = match &mut self.0 {
            Some(s) => s,
            None => self.0.insert(PsqlSession::open(
                &target.tools,
                &target.conn,
                &target.database,
                target.redactor.clone(),
            )?),
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), session.query(sql)).await;
        match answer {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => {
                self.0 = None;
                Err(e.into())
            }
            Err(_) => {
                self.0 = None;
                anyhow::bail!("no answer within 5s")
            }
        }
    }

    async fn close(self) {
        if let Some(s) = self.0 {
            s.close().await;
        }
    }
}

async fn waits(session: &mut Session, target: &PgTarget) -> Vec<Wait> {
    let out = match session.query(target, WAITS_SQL).await {
        Ok(out) => out,
        // Only a diagnosis: its failure must not fail the restore.
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "lock wait check failed");
            return Vec::new();
        }
    };
    out.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            let [waiter, waited, relation, mode, holder, user, app, state, open] = f[..] else {
                return None;
            };
            // Only digits reach the cancel statement.
            if !waiter.bytes().all(|b| b.is_ascii_digit()) || waiter.is_empty() {
                return None;
            }
            Some(Wait {
                waiter: waiter.to_string(),
                waited: waited.parse().unwrap_or(0),
                relation: relation.to_string(),
                mode: mode.to_string(),
                holder: holder.to_string(),
                user: user.to_string(),
                app: app.to_string(),
                state: state.to_string(),
                open: open.to_string(),
            })
        })
        .collect()
}

fn log(w: &Wait, timeout: Option<Duration>) {
    let limit = match timeout {
        Some(t) => format!(
            "gives up after --lock-timeout {}",
            humantime::format_duration(t)
        ),
        None => "waits without limit (--lock-timeout 0)".to_string(),
    };
    let open = if w.open.is_empty() {
        String::new()
    } else {
        format!(", transaction open {}s", w.open)
    };
    tracing::warn!(
        relation = %w.relation,
        mode = %w.mode,
        blocking_pid = %w.holder,
        waited_seconds = w.waited,
        "restore waits for {} on {}, held by session {} (user {:?}, application {:?}, {}{open}); it {limit}: end that session (pg_terminate_backend({})) or wait",
        w.mode, w.relation, w.holder, w.user, w.app, w.state, w.holder
    );
}
