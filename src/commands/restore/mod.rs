//! `backhaul restore`: one artifact into a PostgreSQL database (MongoDB artifacts: see
//! [`mongo`]).
//!
//! Streaming by default (object → checks → decompress → `pg_restore --single-transaction`),
//! with the archive's tail withheld until the checksum matched (see [`crate::read_path`]), so a
//! damaged object commits nothing. `--jobs N` runs parallel pg_restores while the object
//! downloads (see [`jobs`]).
//!
//! Owners and privileges are restored as they were (pg_restore's defaults); `--no-owner` and
//! `--no-acl` are opt-ins for restoring as another, non-superuser role. Before the target is
//! touched, every role the archive names is checked against the target cluster
//! ([`contents::preflight`]).

pub mod contents;
pub mod dir;
pub mod globals;
pub mod jobs;
mod lock_wait;
pub mod mongo;
mod stream;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use tokio_util::io::SyncIoBridge;
use tokio_util::sync::CancellationToken;

use super::common::{self, Store};
use super::Runtime;
use crate::catalog::{Entry, Filter};
use crate::cli::RestoreArgs;
use crate::config::postgres::PgConn;
use crate::config::ConfigError;
use crate::crypto::Identities;
use crate::layout::Kind;
use crate::read_path::{Decode, Fed};
use crate::secret::Redactor;
use crate::source::postgres::{self as pg, PgTools, RestoreOpts};
use crate::storage::Storage;
use contents::Privileges;
use mongo::MongoTarget;

/// Counts what a restore would collide with: user tables, views, sequences.
const USER_RELATIONS_SQL: &str = "select count(*) from pg_class c join pg_namespace n on n.oid=c.relnamespace where c.relkind in ('r','p','v','m','S') and n.nspname not in ('pg_catalog','information_schema') and n.nspname not like 'pg_toast%'";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("target database \"{database}\" is not empty ({relations} tables, views or sequences): pass --clean to drop the objects the backup contains before restoring")]
    NotEmpty { database: String, relations: u64 },
    #[error(
        "{0} holds the cluster's roles, not a database: apply it with `backhaul restore-globals`"
    )]
    Globals(String),
    #[error("target database \"{database}\" does not exist: create it first, e.g. `createdb -h {host} -p {port} -U {user} {database}` (a role with CREATEDB), then run the restore again")]
    NoDatabase {
        database: String,
        host: String,
        port: u16,
        user: String,
    },
    #[error("a MongoDB URI cannot be used here: expected a postgresql:// URL")]
    NotPostgres,
    #[error("{key} is a {kind} backup, but the target is a {target} URL: restore it into a {kind} database")]
    WrongTarget {
        key: String,
        kind: &'static str,
        target: &'static str,
    },
}

/// A PostgreSQL database to restore into, with the client tools and a redactor for its password.
#[derive(Clone)]
pub struct PgTarget {
    pub tools: PgTools,
    pub conn: PgConn,
    pub database: String,
    pub redactor: Redactor,
}

impl PgTarget {
    /// `var` names the flag/variable the URL came from, for configuration errors.
    pub async fn resolve(
        url: &str,
        var: &str,
        pg_dump_path: Option<&Path>,
    ) -> anyhow::Result<PgTarget> {
        if is_mongo_url(url) {
            return Err(RestoreError::NotPostgres.into());
        }
        let conn = PgConn::parse_url(url).map_err(|e| ConfigError::invalid(var, e.message))?;
        let database = conn.databases.first().cloned().ok_or_else(|| {
            ConfigError::invalid(
                var,
                "has no database name; expected postgresql://user:password@host:5432/dbname",
            )
        })?;
        let mut redactor = Redactor::default();
        common::pg_redactor(&conn, &mut redactor);
        let tools = locate_tools(pg_dump_path).await?;
        Ok(PgTarget {
            tools,
            conn,
            database,
            redactor,
        })
    }

    pub async fn query(&self, sql: &str) -> anyhow::Result<String> {
        pg::psql_query(&self.tools, &self.conn, &self.database, sql, &self.redactor)
            .await
            .with_context(|| format!("querying database \"{}\"", self.database))
    }

    /// User relations in the target; a database that does not exist is said as such, with
    /// how to create it, instead of psql's raw "FATAL: database … does not exist".
    pub async fn user_relations(&self) -> anyhow::Result<u64> {
        let out = match self.query(USER_RELATIONS_SQL).await {
            Ok(out) => out,
            Err(e) if self.missing_database(&e) => {
                return Err(RestoreError::NoDatabase {
                    database: self.database.clone(),
                    host: self.conn.host.clone(),
                    port: self.conn.port,
                    user: self.conn.user.clone(),
                }
                .into())
            }
            Err(e) => return Err(e),
        };
        out.trim()
            .parse()
            .with_context(|| format!("unexpected count {out:?}"))
    }

    /// psql's "database \"x\" does not exist" (SQLSTATE 3D000, reported at connect).
    fn missing_database(&self, e: &anyhow::Error) -> bool {
        let text = format!("{e:#}");
        text.contains(&format!("database \"{}\" does not exist", self.database))
    }

    /// Exact `count(*)` per user table, `schema.table` → rows: what a restore test reports.
    pub async fn row_counts(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let tables = self
            .query("select format('%I.%I', schemaname, tablename) from pg_tables where schemaname not in ('pg_catalog','information_schema') order by 1")
            .await?;
        let tables: Vec<&str> = tables.lines().filter(|l| !l.is_empty()).collect();
        if tables.is_empty() {
            return Ok(BTreeMap::new());
        }
        let sql = tables
            .iter()
            .map(|t| {
                format!(
                    "select '{}' || '|' || count(*) from {t}",
                    t.replace('\'', "''")
                )
            })
            .collect::<Vec<_>>()
            .join(" union all ");
        let out = self.query(&sql).await?;
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (name, n) = l.rsplit_once('|').context("unexpected psql output")?;
                Ok((name.to_string(), n.parse()?))
            })
            .collect()
    }
}

pub fn is_mongo_url(url: &str) -> bool {
    url.starts_with("mongodb://") || url.starts_with("mongodb+srv://")
}

/// Where a restore can go: a PostgreSQL URL or a MongoDB URI. Anything else is named with
/// both accepted forms (the PostgreSQL parser alone would only mention its own).
pub fn check_target_scheme(url: &str, var: &str) -> Result<(), ConfigError> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("postgres" | "postgresql" | "mongodb" | "mongodb+srv") => Ok(()),
        _ => Err(ConfigError::invalid(
            var,
            format!(
                "{}: expected postgresql://user:password@host:5432/dbname or mongodb://user:password@host:27017/[db]",
                match scheme {
                    Some(s) => format!("has scheme \"{s}\""),
                    None => "is not a URL".to_string(),
                }
            ),
        )),
    }
}

/// `PG_DUMP_PATH` (pg_restore and psql are taken from beside it) or the newest install.
pub async fn locate_tools(explicit: Option<&Path>) -> anyhow::Result<PgTools> {
    match PgTools::locate(explicit).await {
        Ok(t) => Ok(t),
        Err(e) if e.is_config() => Err(ConfigError::invalid(
            "PG_DUMP_PATH",
            e.to_string()
                .trim_start_matches("PG_DUMP_PATH ")
                .to_string(),
        )
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// `--lock-timeout`: a duration, or 0 for no limit.
fn parse_lock_timeout(s: &str) -> Result<Option<std::time::Duration>, ConfigError> {
    if s.trim() == "0" {
        return Ok(None);
    }
    common::parse_duration(s, "RESTORE_LOCK_TIMEOUT").map(Some)
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    event: &'static str,
    status: &'static str,
    key: &'a str,
    database: &'a str,
    stored_bytes: u64,
    raw_bytes: u64,
    sha256: &'a str,
    checksum_verified: bool,
    seconds: f64,
}

impl Summary<'_> {
    /// A JSON line for machines, a sentence on a terminal (see `crate::output`).
    fn print(&self) -> anyhow::Result<()> {
        if crate::output::human() {
            println!(
                "{}",
                crate::output::restore_line(
                    self.key,
                    self.database,
                    self.stored_bytes,
                    self.raw_bytes,
                    self.seconds,
                    self.checksum_verified
                )
            );
        } else {
            println!("{}", serde_json::to_string(self)?);
        }
        Ok(())
    }
}

pub async fn run(args: RestoreArgs, rt: Runtime) -> anyhow::Result<()> {
    let store = Store::resolve_for_key(&args.store, &args.key)?;
    let filter = common::filter(args.kind.as_deref(), args.database.clone())?;
    if args.jobs == Some(0) {
        return Err(ConfigError::invalid("--jobs", "must be at least 1").into());
    }
    let spool_budget = args
        .spool_budget
        .as_deref()
        .map(jobs::parse_budget)
        .transpose()
        .map_err(|why| ConfigError::invalid("--spool-budget", why))?;
    let identities = load_identities(args.identity.as_deref())?;
    check_target_scheme(&args.to, "RESTORE_TO")?;
    let lock_timeout = parse_lock_timeout(&args.lock_timeout)?;
    if is_mongo_url(&args.to) {
        return run_mongo(args, store, filter, identities, rt).await;
    }
    let target = PgTarget::resolve(&args.to, "RESTORE_TO", args.pg.pg_dump_path.as_deref()).await?;
    // Finding the backup and counting what the target holds (read-only) go side by side;
    // their errors are still reported in this order.
    let (found, relations) = tokio::join!(
        async {
            let storage = store.open_existing().await?;
            let entry = store.find(&storage, &args.key, &filter).await?;
            anyhow::Ok((storage, entry))
        },
        target.user_relations()
    );
    let (storage, entry) = found?;
    if entry.parsed.globals {
        return Err(RestoreError::Globals(entry.key.clone()).into());
    }
    if entry.parsed.kind == Kind::Mongo {
        return Err(RestoreError::WrongTarget {
            key: entry.key.clone(),
            kind: "mongo",
            target: "postgresql://",
        }
        .into());
    }
    entry.trust(args.allow_unverified)?;
    // Before touching the target: an encrypted artifact without an identity is a setting to fix.
    let decode = Decode::for_artifact(&entry.key, &entry.parsed.extension, identities.as_ref())?;
    let relations = relations?;
    if relations > 0 && !args.clean {
        return Err(RestoreError::NotEmpty {
            database: target.database.clone(),
            relations,
        }
        .into());
    }
    tracing::info!(key = %entry.key, database = %target.database, clean = args.clean, "restore starting");
    let started = Instant::now();
    let privileges = Privileges {
        no_owner: args.privileges.no_owner,
        no_acl: args.privileges.no_acl,
    };
    let restoring = restore_pg(
        &storage,
        &entry,
        decode,
        &target,
        args.clean,
        args.jobs,
        spool_budget,
        privileges,
        &rt.cancel,
    );
    let fed = lock_wait::watch(&target, lock_timeout, restoring)
        .await?
        .fed;
    let line = Summary {
        event: "restore",
        status: "ok",
        key: &entry.key,
        database: &target.database,
        stored_bytes: fed.stored_bytes,
        raw_bytes: fed.raw_bytes,
        sha256: &fed.sha256,
        checksum_verified: entry.manifest.is_some(),
        seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    };
    line.print()
}

/// `restore` into a MongoDB deployment: `--clean` becomes mongorestore's `--drop`.
async fn run_mongo(
    args: RestoreArgs,
    store: Store,
    filter: Filter,
    identities: Option<Arc<Identities>>,
    rt: Runtime,
) -> anyhow::Result<()> {
    if args.jobs.is_some() {
        return Err(ConfigError::invalid("--jobs", "applies to PostgreSQL restores only").into());
    }
    if args.privileges.no_owner || args.privileges.no_acl {
        return Err(ConfigError::invalid(
            "--no-owner/--no-acl",
            "apply to PostgreSQL restores only",
        )
        .into());
    }
    let target = MongoTarget::resolve(&args.to, "RESTORE_TO", &args.mongo)?;
    let storage = store.open_existing().await?;
    let entry = store.find(&storage, &args.key, &filter).await?;
    if entry.parsed.kind != Kind::Mongo {
        return Err(RestoreError::WrongTarget {
            key: entry.key.clone(),
            kind: "postgres",
            target: "mongodb://",
        }
        .into());
    }
    entry.trust(args.allow_unverified)?;
    let database = target.database_for(&entry.parsed.database);
    tracing::info!(key = %entry.key, database = %database, clean = args.clean, "restore starting");
    let started = Instant::now();
    // mongorestore's stderr is already redacted with the target's secrets (see ChildProc).
    let done = mongo::restore_mongo(
        &storage,
        &entry,
        &target,
        args.clean,
        identities.as_ref(),
        &rt.cancel,
    )
    .await?;
    let line = Summary {
        event: "restore",
        status: "ok",
        key: &entry.key,
        database: &done.database,
        stored_bytes: done.fed.stored_bytes,
        raw_bytes: done.fed.raw_bytes,
        sha256: &done.fed.sha256,
        checksum_verified: entry.manifest.is_some(),
        seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    };
    line.print()
}

/// What a PostgreSQL restore did.
pub struct Restored {
    pub fed: Fed,
    /// The archive's table of contents, as read for the role preflight.
    pub entries: Vec<crate::source::pg_toc::Entry>,
}

/// Restores one PostgreSQL artifact into `target`. Checks the manifest's SHA-256 and size
/// when there is a manifest; objects from the old script have none and are restored unchecked.
/// First reads the archive's TOC from the object's head and refuses (target untouched) when
/// a role it needs is missing; with `--jobs` the download to the temp file runs meanwhile.
#[allow(clippy::too_many_arguments)]
pub async fn restore_pg(
    storage: &Arc<dyn Storage>,
    entry: &Entry,
    decode: Decode,
    target: &PgTarget,
    clean: bool,
    jobs: Option<u32>,
    spool_budget: Option<u64>,
    privileges: Privileges,
    cancel: &CancellationToken,
) -> anyhow::Result<Restored> {
    // Whether an entry without a manifest may be restored at all is the caller's decision
    // ([`Entry::trust`]); here it is restored unchecked.
    let expect = entry.expectation();
    let opts = RestoreOpts {
        clean,
        jobs,
        spool_budget,
        no_owner: privileges.no_owner,
        no_acl: privileges.no_acl,
    };
    if entry.parsed.directory {
        return dir::restore(storage, entry, decode, target, &opts, privileges, cancel).await;
    }
    let preflight = contents::preflight(storage, &entry.key, decode.clone(), target, privileges);
    let (entries, fed) = match jobs {
        // The download starts beside the preflight; the target waits for the preflight.
        Some(j) if j > 1 => {
            jobs::restore(
                storage, &entry.key, decode, expect, target, &opts, preflight, cancel,
            )
            .await?
        }
        _ => {
            let entries = preflight.await?;
            let bridge = SyncIoBridge::new(storage.get(&entry.key).await?);
            (
                entries,
                stream::restore(bridge, decode, expect, target, &opts, cancel).await?,
            )
        }
    };
    Ok(Restored { fed, entries })
}

/// `--identity`, read up front so a bad file fails before anything runs (exit 2).
pub fn load_identities(path: Option<&Path>) -> anyhow::Result<Option<Arc<Identities>>> {
    Ok(path.map(Identities::load).transpose()?.map(Arc::new))
}
