//! Is the host a pooler that shares server sessions between clients? A parallel pg_dump
//! needs every connection to keep its own session (the leader's exported snapshot, each
//! worker's `SET TRANSACTION SNAPSHOT`, pg_dump's `search_path`), which a transaction (or
//! statement) pooler does not give. Poolers known by name are refused from the settings
//! (`config::postgres::pooler_host`); this finds the others by what they do.
//!
//! Two connections, one after the other: the first sets a session variable to a nonce and
//! disconnects; the second, a new client, reads it. A fresh backend cannot know the nonce, so
//! reading it back means the first client's session outlived it and was handed to the second:
//! transaction pooling. A session pooler resets the server session between clients
//! (PgBouncer's `server_reset_query`, `DISCARD ALL`) and passes. A pool that hands the second
//! client another server connection (round-robin, a busy pool) also passes: false negatives
//! are possible, false positives are not.

use crate::config::postgres::PgConn;
use crate::secret::Redactor;
use crate::source::postgres::{psql_query, PgError, PgTools};

/// The session variable the probe sets (a custom placeholder: no extension needed).
const PROBE_VAR: &str = "backhaul.pool_probe";

/// A backend this many seconds old on a new connection was not started for us: a pool kept it.
const REUSED_AFTER_SECS: i64 = 5;

/// What the first connection saw of its server.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub in_recovery: bool,
    /// `server_version_num` (150018 = 15.18, 90624 = 9.6.24).
    pub version_num: u32,
    /// Seconds since the backend serving the first connection started (-1: not visible).
    pub backend_age: i64,
}

/// The probe's verdict on a host, for a parallel dump.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A new client read what the previous one set: sessions are shared (transaction or
    /// statement pooling). A parallel dump cannot run here.
    SharedSessions,
    /// A standby older than PostgreSQL 10 cannot export a snapshot to pg_dump's workers.
    OldStandby { version_num: u32 },
    /// No shared session, but the backend was older than the connection: a session pooler
    /// (or a connection proxy) that resets sessions between clients. Allowed.
    SessionPool { backend_age: i64 },
    /// A backend of our own: a direct connection. Allowed.
    Direct,
}

/// Runs the two probe queries on `database` and returns the verdict.
pub async fn probe(
    tools: &PgTools,
    conn: &PgConn,
    database: &str,
    nonce: &str,
    redactor: &Redactor,
) -> Result<Verdict, PgError> {
    let first = psql_query(tools, conn, database, &first_query(nonce), redactor).await?;
    let server = parse_first(&first, nonce)?;
    // current_setting(name, missing_ok) is 9.6+; an older server only gets the standby check.
    let second = if server.version_num >= 90600 {
        Some(psql_query(tools, conn, database, &second_query(), redactor).await?)
    } else {
        None
    };
    Ok(verdict(&server, second.as_deref()))
}

/// Sets the nonce for the rest of the session (`is_local` false) and says what the server is.
fn first_query(nonce: &str) -> String {
    format!(
        "select set_config('{PROBE_VAR}', '{nonce}', false), pg_is_in_recovery(), current_setting('server_version_num'), coalesce((select extract(epoch from now() - backend_start)::bigint from pg_stat_activity where pid = pg_backend_pid()), -1)"
    )
}

/// Reads the variable on a new connection: empty unless a session came with it.
fn second_query() -> String {
    format!("select coalesce(current_setting('{PROBE_VAR}', true), '')")
}

/// `<nonce>|f|150018|0`, psql's unaligned output of [`first_query`].
fn parse_first(out: &str, nonce: &str) -> Result<Server, PgError> {
    let bad = || PgError::Unexpected {
        what: "the pooler probe",
        answer: out.to_string(),
    };
    let fields: Vec<&str> = out.trim().split('|').collect();
    let [set, recovery, version, age] = fields[..] else {
        return Err(bad());
    };
    if set != nonce {
        return Err(bad());
    }
    Ok(Server {
        in_recovery: match recovery {
            "t" => true,
            "f" => false,
            _ => return Err(bad()),
        },
        version_num: version.parse().map_err(|_| bad())?,
        backend_age: age.parse().map_err(|_| bad())?,
    })
}

/// The verdict from what the first connection saw and what the second read (`None`: not
/// asked, the server is too old for it). Any value read back is a leak: the nonce only makes
/// the first query's answer recognisable.
pub fn verdict(server: &Server, second: Option<&str>) -> Verdict {
    if server.in_recovery && server.version_num < 100_000 {
        return Verdict::OldStandby {
            version_num: server.version_num,
        };
    }
    // Our nonce, or any value (another client's probe, as concurrent runs share a pool): a
    // session outlived its client.
    if let Some(read) = second.map(str::trim) {
        if !read.is_empty() {
            return Verdict::SharedSessions;
        }
    }
    if server.backend_age >= REUSED_AFTER_SECS {
        return Verdict::SessionPool {
            backend_age: server.backend_age,
        };
    }
    Verdict::Direct
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(in_recovery: bool, version_num: u32, backend_age: i64) -> Server {
        Server {
            in_recovery,
            version_num,
            backend_age,
        }
    }

    #[test]
    fn the_first_answer_parses() {
        assert_eq!(
            parse_first("n0nce|f|150018|0\n", "n0nce").unwrap(),
            server(false, 150018, 0)
        );
        assert_eq!(
            parse_first("n0nce|t|90624|-1", "n0nce").unwrap(),
            server(true, 90624, -1)
        );
        for bad in [
            "",
            "n0nce|f|150018",
            "other|f|150018|0",
            "n0nce|x|1|0",
            "n0nce|f|v|0",
        ] {
            assert!(parse_first(bad, "n0nce").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_new_client_reading_the_nonce_is_a_shared_session() {
        let s = server(false, 150018, 0);
        assert_eq!(verdict(&s, Some("n")), Verdict::SharedSessions);
        // Another client's value leaked just the same.
        assert_eq!(verdict(&s, Some("other")), Verdict::SharedSessions);
        // Even on an old backend: the leak decides, not the age.
        let old = server(false, 150018, 600);
        assert_eq!(verdict(&old, Some("n\n")), Verdict::SharedSessions);
    }

    #[test]
    fn nothing_read_back_is_a_direct_connection_or_a_session_pool() {
        assert_eq!(
            verdict(&server(false, 150018, 0), Some("")),
            Verdict::Direct
        );
        assert_eq!(
            verdict(&server(false, 150018, 4), Some("")),
            Verdict::Direct
        );
        assert_eq!(
            verdict(&server(false, 150018, 5), Some("")),
            Verdict::SessionPool { backend_age: 5 }
        );
        // Age unknown (pg_stat_activity hidden): nothing says pool.
        assert_eq!(
            verdict(&server(false, 150018, -1), Some("")),
            Verdict::Direct
        );
        // Not asked (a server before 9.6): no leak seen.
        assert_eq!(verdict(&server(false, 90500, 0), None), Verdict::Direct);
    }

    #[test]
    fn standbys_before_10_cannot_export_snapshots() {
        assert_eq!(
            verdict(&server(true, 90624, 0), Some("")),
            Verdict::OldStandby { version_num: 90624 }
        );
        assert_eq!(verdict(&server(true, 100000, 0), Some("")), Verdict::Direct);
        // A primary of any version exports snapshots.
        assert_eq!(verdict(&server(false, 90624, 0), Some("")), Verdict::Direct);
    }

    #[test]
    fn the_queries_name_one_variable() {
        assert!(first_query("abc").contains("set_config('backhaul.pool_probe', 'abc', false)"));
        assert!(second_query().contains("current_setting('backhaul.pool_probe', true)"));
    }
}
