//! `backhaul backup`: every configured target, one shared timestamp, independent outcomes.
//!
//! Order of business: resolve and validate everything (exit 2, nothing touched); print the
//! plan for `--dry-run`; then run targets, each streaming into a two-phase upload that is
//! finished only when the dump tool exited 0, and aborted otherwise.

mod dir;
mod dump;
mod plan;
mod target;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::common::{self, Store};
use super::verify::{self, Verifier};
use super::{Interrupted, Reported, Runtime};
use crate::catalog::{Entry, Filter};
use crate::cli::{BackupArgs, Only};
use crate::commands::restore::contents::{self, Privileges};
use crate::commands::restore::PgTarget;
use crate::config::mongo::{MongoConn, MongoFormat};
use crate::config::postgres::PgConn;
use crate::config::{non_empty, ConfigError, PgCompression};
use crate::crypto::{self, Recipients};
use crate::layout::{self, Kind};
use crate::manifest::{self, GlobalsInfo, Manifest, SourceInfo};
use crate::progress::Progress;
use crate::report::{ArtifactReport, Notifier};
use crate::secret::Redactor;
use crate::secret::Secret;
use crate::source::child::ChildProc;
use crate::source::mongo::{self, MongoTools};
use crate::source::postgres::{self as pg, PgTools};
use crate::storage::{Storage, StorageError, Unusable, Upload};
use crate::write_path::{self, Codec, PipelineError, Producer, StreamStats};

use dump::*;
use plan::*;
use target::*;

/// Everything a target needs, shared across concurrently running targets.
struct Job {
    store: Store,
    storage: Arc<dyn Storage>,
    redactor: Redactor,
    timestamp: String,
    pg: Option<(PgSettings, PgTools)>,
    mongo: Option<(MongoSettings, MongoTools)>,
    timeout: Option<Duration>,
    /// `--encrypt-to`: every artifact is encrypted to these.
    encrypt: Option<Recipients>,
    globals: GlobalsMode,
    /// `--verify-no-owner` / `--verify-no-acl`.
    verify_privileges: Privileges,
    cancel: CancellationToken,
    /// `--jobs`: databases the pooler check could not ask; their dumps fail without starting.
    unchecked: dir::Unchecked,
}

impl Job {
    /// Adds the encryption stage when recipients are configured.
    fn seal(&self, producer: Producer) -> Producer {
        match &self.encrypt {
            Some(r) => r.encrypting(producer),
            None => producer,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum TargetError {
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The run: plan → (print it, for `--dry-run`) → prepare → run targets → report → verify →
/// notify → prune. Each step is a function below, in that order.
pub async fn run(args: BackupArgs, rt: Runtime) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    if args.dry_run {
        return print_plan(&plan);
    }
    let (job, verify_target) = prepare(&plan, &rt).await?;
    if let Some(n) = &plan.notifier {
        n.start(&job.store.stage).await;
    }
    let started = std::time::Instant::now();
    let results = run_targets(&job, &plan.targets, plan.parallel).await?;
    let tally = report(&job, &results);
    if let Some(usage) = crate::resources::Usage::of_self() {
        let ok = results.iter().filter_map(|r| r.3.as_ref().ok());
        let (raw, stored) = ok
            .map(|m| m.backup_bytes())
            .fold((0, 0), |(r, s), (mr, ms)| (r + mr, s + ms));
        usage.log(raw, stored);
    }
    let mut unverified = 0;
    if let (Some(target), false) = (verify_target, tally.interrupted) {
        unverified = verify_results(&job, target, &results).await?;
    }
    if crate::output::human() {
        print!(
            "{}",
            crate::output::backup_summary(
                &job.store.stage,
                &tally.reports,
                started.elapsed().as_secs_f64(),
                unverified,
                tally.interrupted
            )
        );
    }
    if let Some(n) = &plan.notifier {
        n.finish(
            &job.store.stage,
            &tally.reports,
            tally.interrupted || unverified > 0,
        )
        .await;
    }
    if tally.interrupted {
        return Err(Interrupted.into());
    }
    if tally.failed > 0 || unverified > 0 {
        return Err(Reported(format!(
            "{} of {} backups failed, {unverified} failed verification",
            tally.failed,
            results.len()
        ))
        .into());
    }
    if let Some(rules) = &plan.prune {
        super::prune::apply(&job.storage, &job.store, rules, &Filter::default(), false)
            .await
            .context("pruning after the backup")?;
    }
    Ok(())
}

/// `--dry-run`: the resolved plan as JSON (connections redacted).
fn print_plan(plan: &RunPlan) -> anyhow::Result<()> {
    let shown = Plan {
        destination: plan.store.dest.display(),
        stage: &plan.store.stage,
        timestamp: &plan.timestamp,
        timezone: plan.store.zone.name(),
        targets: &plan.targets,
    };
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}

/// Opens storage and checks it can take the backup (bucket, Object Lock, directory), then
/// finds the dump tools and resolves the verification target: the first steps that touch the
/// machine or the network, after every setting was checked, and all before any dump starts.
async fn prepare(plan: &RunPlan, rt: &Runtime) -> anyhow::Result<(Arc<Job>, Option<PgTarget>)> {
    let storage = plan.store.open().await?;
    storage
        .check_writable()
        .await
        .map_err(|e| -> anyhow::Error {
            match e {
                Unusable::Destination(m) => ConfigError::invalid(plan.store.dest_var, m).into(),
                Unusable::Lock(m) => ConfigError::invalid("BACKUP_LOCK_DAYS", m).into(),
                Unusable::Service(m) => anyhow::anyhow!(m),
            }
        })?;
    let mut unchecked = dir::Unchecked::new();
    let pg = match &plan.pg {
        Some(s) => {
            let tools = match PgTools::locate(s.pg_dump_path.as_deref()).await {
                Ok(t) => t,
                Err(e) if e.is_config() => {
                    return Err(ConfigError::invalid(
                        "PG_DUMP_PATH",
                        e.to_string()
                            .trim_start_matches("PG_DUMP_PATH ")
                            .to_string(),
                    )
                    .into())
                }
                Err(e) => return Err(e.into()),
            };
            tracing::info!(pg_dump = %tools.pg_dump.display(), version = %tools.version, "using pg_dump");
            if s.jobs > 1 {
                dir::check_spool(s)?;
                unchecked = dir::check_pooling(s, &tools, &plan.redactor).await?;
            }
            Some((s.clone(), tools))
        }
        None => None,
    };
    let mongo = match &plan.mongo {
        Some(s) => {
            let tools = match MongoTools::locate(s.mongodump_path.as_deref()).await {
                Ok(t) => t,
                Err(e) if e.is_config() => {
                    return Err(ConfigError::invalid("MONGODUMP_PATH", e.to_string()).into())
                }
                Err(e) => return Err(e.into()),
            };
            tracing::info!(mongodump = %tools.mongodump.display(), version = %tools.version, "using mongodump");
            Some((s.clone(), tools))
        }
        None => None,
    };
    let verify_target = match (&plan.verify_into, &pg) {
        (Some(url), Some((s, _))) => {
            Some(PgTarget::resolve(url, "BACKUP_VERIFY_INTO", s.pg_dump_path.as_deref()).await?)
        }
        _ => None,
    };
    tracing::info!(destination = %plan.store.dest.display(), stage = %plan.store.stage, timestamp = %plan.timestamp, targets = plan.targets.len(), "backup starting");
    let job = Arc::new(Job {
        store: plan.store.clone(),
        storage,
        redactor: plan.redactor.clone(),
        timestamp: plan.timestamp.clone(),
        pg,
        mongo,
        timeout: plan.timeout,
        encrypt: plan.encrypt.clone(),
        globals: plan.globals,
        verify_privileges: plan.verify_privileges,
        cancel: rt.cancel.clone(),
        unchecked,
    });
    Ok((job, verify_target))
}

/// Runs every target, at most `parallel` at once; results in target order.
async fn run_targets(
    job: &Arc<Job>,
    targets: &[Target],
    parallel: usize,
) -> anyhow::Result<Vec<TargetResult>> {
    let limit = Arc::new(Semaphore::new(parallel));
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in targets.iter().cloned().enumerate() {
        let (job, limit) = (job.clone(), limit.clone());
        set.spawn(crate::cleanup::tracked(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore open");
            let started = Instant::now();
            let res = run_target(&job, &t).await;
            (i, t, started.elapsed(), res)
        }));
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        results.push(r.context("backup task panicked")?);
    }
    results.sort_by_key(|r| r.0);
    Ok(results)
}

/// What the per-artifact report lines add up to.
struct Tally {
    failed: usize,
    interrupted: bool,
    reports: Vec<ArtifactReport>,
}

/// One log line and one stdout summary line per artifact.
fn report(job: &Job, results: &[TargetResult]) -> Tally {
    let mut tally = Tally {
        failed: 0,
        interrupted: false,
        reports: Vec::with_capacity(results.len()),
    };
    for (_, t, took, res) in results {
        let seconds = (took.as_secs_f64() * 1000.0).round() / 1000.0;
        let mut report = ArtifactReport {
            event: "artifact",
            status: "ok",
            stage: job.store.stage.clone(),
            kind: t.kind,
            database: t.database.clone(),
            key: t.key.clone(),
            raw_bytes: None,
            stored_bytes: None,
            sha256: None,
            seconds,
            error: None,
        };
        match res {
            Ok(m) => {
                // A directory dump's bytes are all its objects'; its sha256 is its TOC's.
                let (raw, stored) = m.backup_bytes();
                tracing::info!(kind = t.kind.as_str(), database = %t.database, key = %t.key, stored_bytes = stored, raw_bytes = raw, sha256 = %m.sha256, seconds, "backup ok");
                report.raw_bytes = Some(raw);
                report.stored_bytes = Some(stored);
                report.sha256 = Some(m.sha256.clone());
            }
            Err(e)
                if t.globals
                    && job.globals == GlobalsMode::Auto
                    && !matches!(e, TargetError::Interrupted) =>
            {
                // BACKUP_GLOBALS=auto: the databases are what the run is for; say loudly
                // that the roles were not saved, but do not fail it.
                let msg = dump::without_query(&job.redactor.redact(&format!("{:#}", clone_err(e))));
                tracing::warn!(key = %t.key, error = %msg, "cluster globals not saved (BACKUP_GLOBALS=auto: the run goes on; set BACKUP_GLOBALS=on to make this fatal, off to stop trying)");
                report.status = "skipped";
                report.error = Some(msg);
            }
            Err(e) => {
                tally.failed += 1;
                tally.interrupted |= matches!(e, TargetError::Interrupted);
                let msg = job.redactor.redact(&format!("{:#}", clone_err(e)));
                tracing::error!(kind = t.kind.as_str(), database = %t.database, key = %t.key, seconds, error = %msg, "backup failed");
                report.status = "failed";
                report.error = Some(msg);
            }
        }
        // On a terminal, the closing summary says it all (see `crate::output`).
        if !crate::output::human() {
            println!("{}", report.to_line());
        }
        tally.reports.push(report);
    }
    tally
}

type TargetResult = (usize, Target, Duration, Result<Manifest, TargetError>);

/// `--verify-into`: restores each new PostgreSQL artifact into the scratch database and
/// records the outcome in its manifest. Returns how many failed; the artifacts stay either way.
async fn verify_results(
    job: &Job,
    target: PgTarget,
    results: &[TargetResult],
) -> anyhow::Result<usize> {
    let Some((_, tools)) = &job.pg else {
        return Ok(0);
    };
    let mut redactor = job.redactor.clone();
    if let Some(p) = &target.conn.password {
        redactor.add(p);
    }
    let v = Verifier {
        storage: job.storage.clone(),
        tools: Some(tools.clone()),
        redactor,
        identities: None,
        restore_into: Some(target),
        mongo_restore_into: None,
        privileges: job.verify_privileges,
        cancel: job.cancel.clone(),
    };
    let prefix = job.store.dest.key_prefix();
    let mut failed = 0;
    for (_, t, _, res) in results {
        let (Ok(m), Kind::Postgres, false) = (res, t.kind, t.globals) else {
            continue;
        };
        let parsed = layout::parse_key(&prefix, &t.key, &job.store.zone)
            .with_context(|| format!("{} does not parse back", t.key))?;
        let entry = Entry {
            key: t.key.clone(),
            parsed,
            size: m.stored_bytes,
            manifest: Some(m.clone()),
            problem: None,
            last_modified: None,
            written_by_backhaul: true,
        };
        if !verify::check_and_report(&v, &entry).await? {
            failed += 1;
        }
    }
    Ok(failed)
}

fn clone_err(e: &TargetError) -> anyhow::Error {
    match e {
        TargetError::Other(a) => anyhow::anyhow!("{a:#}"),
        other => anyhow::anyhow!("{other}"),
    }
}
/// The manifest of a single-file artifact: what every artifact records (the stored object's
/// size, SHA-256, parts, ETag and version; who wrote it and when). A directory dump starts
/// from the same fields for its TOC object and adds its file list.
fn manifest_of(
    job: &Job,
    t: &Target,
    started_at: chrono::DateTime<Utc>,
    stats: &crate::write_path::StreamStats,
    stored: &crate::storage::Stored,
    source: crate::manifest::SourceInfo,
) -> Manifest {
    Manifest {
        format: manifest::FORMAT,
        tool: "backhaul".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        kind: t.kind,
        stage: job.store.stage.clone(),
        database: t.database.clone(),
        key: t.key.clone(),
        timestamp: job.timestamp.clone(),
        timezone: job.store.zone.name(),
        started_at,
        finished_at: Utc::now(),
        compression: t.compression.clone(),
        raw_bytes: stats.raw_bytes,
        stored_bytes: stats.stored_bytes,
        sha256: stats.sha256.clone(),
        parts: stored.parts,
        etag: stored.etag.clone(),
        version_id: stored.version_id.clone(),
        source,
        encryption: job.encrypt.as_ref().map(Recipients::manifest),
        verification: None,
        contents: None,
        globals: None,
        directory: None,
    }
}
