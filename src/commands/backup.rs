//! `backhaul backup`: every configured target, one shared timestamp, independent outcomes.
//!
//! Order of business: resolve and validate everything (exit 2, nothing touched); print the
//! plan for `--dry-run`; then run targets, each streaming into a two-phase upload that is
//! finished only when the dump tool exited 0, and aborted otherwise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::common::{self, Store};
use super::pg_contents::{self, Privileges};
use super::restore::PgTarget;
use super::verify::{self, Verifier};
use super::{Interrupted, Reported, Runtime};
use crate::catalog::{Entry, Filter};
use crate::cli::{BackupArgs, Only};
use crate::config::mongo::{MongoConn, MongoFormat};
use crate::config::postgres::PgConn;
use crate::config::{non_empty, ConfigError, PgCompression};
use crate::crypto::{self, Recipients};
use crate::layout::{self, Kind};
use crate::manifest::{self, GlobalsInfo, Manifest, SourceInfo};
use crate::pipeline::{self, Codec, PipelineError, Producer, StreamStats};
use crate::progress::Progress;
use crate::report::{ArtifactReport, Notifier};
use crate::retention::Policy;
use crate::secret::Redactor;
use crate::secret::Secret;
use crate::source::child::ChildProc;
use crate::source::mongo::{self, MongoTools};
use crate::source::postgres::{self as pg, PgTools};
use crate::storage::{Storage, StorageError, Upload};

/// One artifact to produce.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub kind: Kind,
    pub database: String,
    pub key: String,
    pub manifest_key: String,
    pub compression: String,
    /// Connection with the password masked.
    pub connection: String,
    /// The run's cluster globals (pg_dumpall --globals-only), not a database.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub globals: bool,
}

impl Target {
    fn new(
        kind: Kind,
        database: &str,
        key: String,
        compression: &str,
        connection: String,
    ) -> Target {
        Target {
            kind,
            database: database.to_string(),
            manifest_key: layout::manifest_key(&key),
            key,
            compression: compression.to_string(),
            connection,
            globals: false,
        }
    }
}

/// `BACKUP_GLOBALS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GlobalsMode {
    /// On; a failure is reported (warning, a `skipped` line) but fails nothing.
    Auto,
    On,
    Off,
}

impl GlobalsMode {
    fn parse(s: &str) -> Result<GlobalsMode, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(GlobalsMode::Auto),
            "on" | "true" | "1" | "yes" => Ok(GlobalsMode::On),
            "off" | "false" | "0" | "no" => Ok(GlobalsMode::Off),
            _ => Err(ConfigError::invalid(
                "BACKUP_GLOBALS",
                format!("\"{s}\" is not auto, on or off"),
            )),
        }
    }
}

#[derive(Debug, Serialize)]
struct Plan<'a> {
    destination: String,
    stage: &'a str,
    timestamp: &'a str,
    timezone: String,
    targets: &'a [Target],
}

#[derive(Clone)]
struct PgSettings {
    conn: PgConn,
    compression: PgCompression,
    level: i32,
    threads: u32,
    extra_args: Vec<String>,
    pg_dump_path: Option<std::path::PathBuf>,
}

#[derive(Clone)]
struct MongoSettings {
    conn: MongoConn,
    format: MongoFormat,
    extra_args: Vec<String>,
    mongodump_path: Option<std::path::PathBuf>,
    /// Parent of the private dump dir in zip mode.
    work_dir: std::path::PathBuf,
    min_free_mib: u64,
    allow_empty: bool,
}

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

/// Everything a run will do, validated (exit 2 on any problem) before anything is contacted.
struct RunPlan {
    store: Store,
    redactor: Redactor,
    pg: Option<PgSettings>,
    mongo: Option<MongoSettings>,
    timeout: Option<Duration>,
    parallel: usize,
    prune: Option<Policy>,
    verify_into: Option<String>,
    globals: GlobalsMode,
    verify_privileges: Privileges,
    encrypt: Option<Recipients>,
    notifier: Option<Notifier>,
    timestamp: String,
    targets: Vec<Target>,
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
    let results = run_targets(&job, &plan.targets, plan.parallel).await?;
    let tally = report(&job, &results);
    let mut unverified = 0;
    if let (Some(target), false) = (verify_target, tally.interrupted) {
        unverified = verify_results(&job, target, &results).await?;
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
    if let Some(policy) = &plan.prune {
        super::prune::apply(&job.storage, &job.store, policy, &Filter::default(), false)
            .await
            .context("pruning after the backup")?;
    }
    Ok(())
}

/// Resolves and validates every setting and names every artifact; no I/O.
fn plan(args: &BackupArgs) -> anyhow::Result<RunPlan> {
    let store = Store::resolve(&args.store)?.with_upload(&args.upload)?;
    let mut redactor = Redactor::default();
    let pg = pg_settings(args, &mut redactor)?;
    let mongo_uri = non_empty(args.mongo.mongo_uri.clone());
    if args.only == Some(Only::Mongo) && mongo_uri.is_none() {
        return Err(ConfigError::missing(
            "MONGO_CONNECTION_STRING",
            "--only mongo needs a MongoDB connection string",
        )
        .into());
    }
    let mongo = match mongo_uri.filter(|_| args.only != Some(Only::Postgres)) {
        Some(uri) => Some(mongo_settings(args, Secret::new(uri), &mut redactor)?),
        None => None,
    };
    if pg.is_none() && mongo.is_none() {
        return Err(ConfigError::missing(
            "PG_DB_HOST",
            "nothing to back up: configure PostgreSQL (PG_DB_HOST, DATABASE_URL or POSTGRES_SECRET) and/or MongoDB (MONGO_CONNECTION_STRING)",
        )
        .into());
    }
    let timeout = non_empty(args.timeout.clone())
        .map(|t| common::parse_duration(&t, "BACKUP_TIMEOUT"))
        .transpose()?;
    if args.parallel == 0 {
        return Err(ConfigError::invalid("BACKUP_PARALLEL", "must be at least 1").into());
    }
    let prune = if args.prune {
        Some(super::prune::policy(&args.keep)?)
    } else {
        None
    };
    let verify_into = non_empty(args.verify_into.clone());
    let globals = GlobalsMode::parse(&args.globals)?;
    let encrypt = Recipients::parse(&args.encrypt_to)?;
    if encrypt.is_some() && verify_into.is_some() {
        // The backup holds only public keys, so it could not decrypt what it restores.
        return Err(ConfigError::invalid(
            "--verify-into",
            "cannot be combined with --encrypt-to (the backup has no identity to decrypt with): run `backhaul verify --identity <file> --restore-into <url>` instead",
        )
        .into());
    }
    let notifier = non_empty(args.notify_url.clone())
        .map(|u| Notifier::new(&u))
        .transpose()?;
    let timestamp = layout::timestamp(store.zone.at(Utc::now()));
    let suffix = if encrypt.is_some() {
        crypto::SUFFIX
    } else {
        ""
    };
    let targets = targets(
        &store,
        &timestamp,
        suffix,
        pg.as_ref(),
        mongo.as_ref(),
        globals,
    )?;
    Ok(RunPlan {
        store,
        redactor,
        pg,
        mongo,
        timeout,
        parallel: args.parallel,
        prune,
        verify_into,
        globals,
        verify_privileges: Privileges {
            no_owner: args.verify_no_owner,
            no_acl: args.verify_no_acl,
        },
        encrypt,
        notifier,
        timestamp,
        targets,
    })
}

/// The PostgreSQL half of the plan, if PostgreSQL is configured (and wanted).
fn pg_settings(args: &BackupArgs, redactor: &mut Redactor) -> anyhow::Result<Option<PgSettings>> {
    let inputs = common::pg_inputs(&args.pg);
    if args.only == Some(Only::Mongo) || !inputs.is_present() {
        if args.only == Some(Only::Postgres) {
            return Err(ConfigError::missing(
                "PG_DB_HOST",
                "--only postgres needs PG_DB_HOST, DATABASE_URL or POSTGRES_SECRET",
            )
            .into());
        }
        return Ok(None);
    }
    let conn = PgConn::resolve(&inputs)?;
    common::pg_redactor(&conn, redactor);
    let compression: PgCompression = args.compression.parse()?;
    if !(1..=19).contains(&args.zstd_level) {
        return Err(ConfigError::invalid(
            "PG_ZSTD_LEVEL",
            format!("{} is not a zstd level (1-19)", args.zstd_level),
        )
        .into());
    }
    let threads = match args.zstd_threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        n => n,
    };
    Ok(Some(PgSettings {
        conn,
        compression,
        level: args.zstd_level,
        threads,
        extra_args: args.pg_dump_args.clone(),
        pg_dump_path: args.pg.tools.pg_dump_path.clone(),
    }))
}

/// One target per database (and the cluster's globals), all under one timestamp.
fn targets(
    store: &Store,
    timestamp: &str,
    suffix: &str,
    pg: Option<&PgSettings>,
    mongo: Option<&MongoSettings>,
    globals: GlobalsMode,
) -> anyhow::Result<Vec<Target>> {
    let prefix = store.dest.key_prefix();
    let mut targets = Vec::new();
    if let Some(s) = pg {
        let ext = match s.compression {
            PgCompression::Zstd => ".dump.zst",
            PgCompression::Pg | PgCompression::None => ".dump",
        };
        let ext = format!("{ext}{suffix}");
        let compression = serde_json::to_value(s.compression)?;
        for db in &s.conn.databases {
            let key =
                layout::artifact_key(&prefix, &store.stage, Kind::Postgres, db, timestamp, &ext);
            targets.push(Target::new(
                Kind::Postgres,
                db,
                key,
                compression.as_str().unwrap_or_default(),
                s.conn.url_for(db),
            ));
        }
        if globals != GlobalsMode::Off {
            let (ext, compression) = match s.compression {
                PgCompression::Zstd => (".sql.zst", "zstd"),
                PgCompression::Pg | PgCompression::None => (".sql", "none"),
            };
            let key =
                layout::globals_key(&prefix, &store.stage, timestamp, &format!("{ext}{suffix}"));
            let first = s
                .conn
                .databases
                .first()
                .map(String::as_str)
                .unwrap_or("postgres");
            let mut t = Target::new(
                Kind::Postgres,
                layout::GLOBALS,
                key,
                compression,
                s.conn.url_for(first),
            );
            t.globals = true;
            targets.push(t);
        }
    }
    if let Some(s) = mongo {
        let ext = format!("{}{suffix}", s.format.extension());
        for db in &s.conn.databases {
            let key = layout::artifact_key(&prefix, &store.stage, Kind::Mongo, db, timestamp, &ext);
            targets.push(Target::new(
                Kind::Mongo,
                db,
                key,
                s.format.compression(),
                s.conn.display_uri(),
            ));
        }
    }
    Ok(targets)
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

/// Finds the dump tools, resolves the verification target and opens storage: the first
/// steps that touch the machine or the network, after every setting was checked.
async fn prepare(plan: &RunPlan, rt: &Runtime) -> anyhow::Result<(Arc<Job>, Option<PgTarget>)> {
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
    let storage = plan.store.open().await?;
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
        set.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore open");
            let started = Instant::now();
            let res = run_target(&job, &t).await;
            (i, t, started.elapsed(), res)
        });
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
                tracing::info!(kind = t.kind.as_str(), database = %t.database, key = %t.key, stored_bytes = m.stored_bytes, raw_bytes = m.raw_bytes, sha256 = %m.sha256, seconds, "backup ok");
                report.raw_bytes = Some(m.raw_bytes);
                report.stored_bytes = Some(m.stored_bytes);
                report.sha256 = Some(m.sha256.clone());
            }
            Err(e)
                if t.globals
                    && job.globals == GlobalsMode::Auto
                    && !matches!(e, TargetError::Interrupted) =>
            {
                // BACKUP_GLOBALS=auto: the databases are what the run is for; say loudly
                // that the roles were not saved, but do not fail it.
                let msg = job.redactor.redact(&format!("{:#}", clone_err(e)));
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
        println!("{}", report.to_line());
        tally.reports.push(report);
    }
    tally
}

/// Validates the MongoDB settings (exit 2 on any problem) and registers the URI's secrets.
fn mongo_settings(
    args: &BackupArgs,
    uri: Secret,
    redactor: &mut Redactor,
) -> anyhow::Result<MongoSettings> {
    let scope = non_empty(args.mongo.mongo_scope.clone())
        .map(|s| s.parse())
        .transpose()?;
    let conn = MongoConn::resolve_scoped(
        &uri,
        non_empty(args.mongo.mongo_db.clone()).as_deref(),
        scope,
    )?;
    mongo::add_secrets(&conn, redactor);
    let format: MongoFormat = args.mongo.mongo_format.parse()?;
    let one_db = conn
        .databases
        .iter()
        .any(|name| conn.dump_database(name).is_some());
    if let Some(why) = mongo::refused_dump_arg(
        &args.mongo.mongodump_args,
        format == MongoFormat::Zip,
        one_db,
    ) {
        return Err(ConfigError::invalid("--mongodump-arg", why).into());
    }
    Ok(MongoSettings {
        conn,
        format,
        extra_args: args.mongo.mongodump_args.clone(),
        mongodump_path: args.mongo.mongodump_path.clone(),
        work_dir: args
            .mongo
            .work_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir),
        min_free_mib: args.mongo.min_free_mib,
        allow_empty: args.mongo.allow_empty,
    })
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

/// Runs one target under the job's cancellation and timeout, and turns success into an
/// artifact plus manifest, failure into nothing at all.
async fn run_target(job: &Job, t: &Target) -> Result<Manifest, TargetError> {
    let started_at = Utc::now();
    let mut upload = job
        .storage
        .begin(&t.key)
        .await
        .map_err(anyhow::Error::from)?;
    let deadline = async {
        match job.timeout {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let produced = tokio::select! {
        r = produce(job, t, upload.as_mut()) => r.map_err(TargetError::Other),
        _ = job.cancel.cancelled() => Err(TargetError::Interrupted),
        _ = deadline => Err(TargetError::TimedOut(job.timeout.unwrap_or_default())),
    };
    let Produced {
        stats,
        source,
        globals,
        contents,
    } = match produced {
        Ok(v) => v,
        Err(e) => {
            abort_upload(upload.as_mut(), &t.key).await;
            return Err(e);
        }
    };
    let stored = match upload.finish().await {
        Ok(stored) => stored,
        Err(e) => {
            // A part that failed late, or CompleteMultipartUpload itself failing or refused
            // (the key is taken), leaves the multipart upload open: abort it here rather than
            // trust the background abort in the upload's Drop, which the process may exit
            // before running. Nothing is deleted: whatever is under the key now is not ours
            // (the storage recognises our own object behind a lost answer as success).
            abort_upload(upload.as_mut(), &t.key).await;
            return Err(anyhow::Error::from(e).into());
        }
    };
    let m = Manifest {
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
        sha256: stats.sha256,
        parts: stored.parts,
        etag: stored.etag,
        version_id: stored.version_id,
        source,
        encryption: job.encrypt.as_ref().map(Recipients::manifest),
        verification: None,
        contents,
        globals,
    };
    if let Err(e) = job
        .storage
        .put_new(&t.manifest_key, m.to_bytes(), "application/json")
        .await
    {
        if let StorageError::Exists(_) = e {
            // Another run's manifest: the store let both runs create the artifact (it does
            // not enforce If-None-Match atomically, as moto does not under a close race), so
            // the object is now ours and the manifest theirs. Deleting would leave their
            // manifest with nothing at all; `verify` reports the ETag mismatch instead.
            return Err(anyhow::Error::from(e)
                .context(format!(
                    "writing the manifest: the store let two runs create {} (no atomic If-None-Match); the object is this run's, the manifest another's, and `verify` will fail it",
                    t.key
                ))
                .into());
        }
        // An artifact without its manifest cannot be verified: do not leave it looking done.
        // The artifact is ours (we just created it), so removing it touches no other run.
        let _ = job.storage.delete(std::slice::from_ref(&t.key)).await;
        return Err(anyhow::Error::from(e)
            .context("writing the manifest")
            .into());
    }
    Ok(m)
}

/// Stops the dump tool after its stream failed and names the root cause. When the upload
/// failed (S3 unreachable, a part rejected), that is the cause: the tool then only died of the
/// EPIPE/SIGPIPE we caused by closing its pipe, and reporting "killed by signal 13" would hide
/// why the backup failed. When reading the stream failed, the tool's own failure, if any, is
/// the cause (the stream only saw EOF/EPIPE).
async fn stop_after_failed_stream(child: ChildProc, e: PipelineError) -> anyhow::Error {
    let stopped = child.terminate().await;
    match (e, stopped) {
        (e @ PipelineError::Storage(_), _) => e.into(),
        (_, Err(tool)) => tool.into(),
        (e, Ok(_)) => e.into(),
    }
}

/// Aborts a failed upload; a failure to abort is only logged, the target has failed anyway.
async fn abort_upload(upload: &mut dyn Upload, key: &str) {
    if let Err(abort) = upload.abort().await {
        tracing::warn!(key = %key, error = %abort, "could not abort the upload; the bucket's lifecycle rule will remove its parts");
    }
}

/// What a target's dump produced, for its manifest.
struct Produced {
    stats: StreamStats,
    source: SourceInfo,
    globals: Option<GlobalsInfo>,
    /// PostgreSQL dumps: the archive's contents from its TOC.
    contents: Option<crate::source::pg_toc::Contents>,
}

async fn produce(job: &Job, t: &Target, upload: &mut dyn Upload) -> anyhow::Result<Produced> {
    match t.kind {
        Kind::Postgres if t.globals => {
            let (s, tools) = job.pg.as_ref().expect("postgres target implies settings");
            let (stats, source, globals) = dump_globals(job, s, tools, upload).await?;
            Ok(Produced {
                stats,
                source,
                globals: Some(globals),
                contents: None,
            })
        }
        Kind::Postgres => {
            let (s, tools) = job.pg.as_ref().expect("postgres target implies settings");
            let (stats, source, contents) =
                dump_postgres(job, s, tools, &t.database, upload).await?;
            Ok(Produced {
                stats,
                source,
                globals: None,
                contents,
            })
        }
        Kind::Mongo => {
            let (s, tools) = job.mongo.as_ref().expect("mongo target implies settings");
            let (stats, source) = dump_mongo(job, s, tools, &t.database, upload).await?;
            Ok(Produced {
                stats,
                source,
                globals: None,
                contents: None,
            })
        }
    }
}

/// `pg_dumpall --globals-only` into the upload. The script is small (roles, not data), so it
/// is read whole first: a permission failure on pg_authid (managed services) is then retried
/// with `--no-role-passwords` before anything is uploaded.
async fn dump_globals(
    job: &Job,
    s: &PgSettings,
    tools: &PgTools,
    upload: &mut dyn Upload,
) -> anyhow::Result<(StreamStats, SourceInfo, GlobalsInfo)> {
    let db = s
        .conn
        .databases
        .first()
        .cloned()
        .unwrap_or_else(|| "postgres".into());
    let server = pg::server_version(tools, &s.conn, &db, &job.redactor)
        .await
        .context("connecting to PostgreSQL")?;
    tools.check_server(&server)?;
    let (script, role_passwords) = match read_globals(job, s, tools, &db, true).await {
        Ok(script) => (script, true),
        Err(e) if format!("{e:#}").contains("pg_authid") => {
            tracing::warn!(error = %job.redactor.redact(&format!("{e:#}")), "the server does not let this role read password hashes: saving the roles without passwords (--no-role-passwords)");
            (read_globals(job, s, tools, &db, false).await?, false)
        }
        Err(e) => return Err(e),
    };
    let codec = match s.compression {
        PgCompression::Zstd => Codec::Zstd {
            level: s.level,
            threads: 1,
        },
        PgCompression::Pg | PgCompression::None => Codec::Identity,
    };
    let producer = job.seal(Box::new(move |sink| {
        pipeline::copy_encoded(std::io::Cursor::new(script), sink, codec)
    }));
    let stats = pipeline::stream(job.storage.clone(), upload, producer, Progress::hidden()).await?;
    Ok((
        stats,
        SourceInfo {
            dump_tool: "pg_dumpall".into(),
            dump_tool_version: tools.version.clone(),
            server_version: Some(server.text),
            host: s.conn.host.clone(),
            neon_endpoint: s.conn.neon_endpoint(),
            collections: None,
        },
        GlobalsInfo { role_passwords },
    ))
}

async fn read_globals(
    job: &Job,
    s: &PgSettings,
    tools: &PgTools,
    db: &str,
    role_passwords: bool,
) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut child =
        pg::spawn_globals_dump(tools, &s.conn, db, role_passwords, job.redactor.clone())?;
    let mut out = child.take_stdout().context("pg_dumpall has no stdout")?;
    let read = tokio::task::spawn_blocking(move || {
        let mut b = Vec::new();
        out.read_to_end(&mut b).map(|_| b)
    });
    let script = read.await.context("reading pg_dumpall's output")?;
    child.wait().await?;
    script.context("reading pg_dumpall's output")
}

async fn dump_postgres(
    job: &Job,
    s: &PgSettings,
    tools: &PgTools,
    db: &str,
    upload: &mut dyn Upload,
) -> anyhow::Result<(
    StreamStats,
    SourceInfo,
    Option<crate::source::pg_toc::Contents>,
)> {
    let server = pg::server_version(tools, &s.conn, db, &job.redactor)
        .await
        .context("connecting to PostgreSQL")?;
    tools.check_server(&server)?;
    let mut child = pg::spawn_dump(
        tools,
        &s.conn,
        db,
        s.compression,
        &s.extra_args,
        job.redactor.clone(),
    )?;
    let stdout = child.take_stdout().context("pg_dump has no stdout")?;
    // The manifest's summary of the archive comes from a copy of the stream's head.
    let (tap, side) = match pg_contents::TocTap::start(tools, job.redactor.clone()) {
        Ok((tap, side)) => (Some(tap), Some(side)),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the archive's table of contents: the manifest will have no contents summary");
            (None, None)
        }
    };
    let stdout = pg_contents::HeadTee::new(stdout, side);
    let codec = match s.compression {
        PgCompression::Zstd => Codec::Zstd {
            level: s.level,
            threads: s.threads,
        },
        PgCompression::Pg | PgCompression::None => Codec::Identity,
    };
    let producer = job.seal(Box::new(move |sink| {
        pipeline::copy_encoded(stdout, sink, codec)
    }));
    let progress = Progress::for_terminal(format!("postgres {db}"));
    let streamed = pipeline::stream(job.storage.clone(), upload, producer, progress.clone()).await;
    progress.done();
    let stats = match streamed {
        Ok(stats) => {
            child.wait().await?;
            stats
        }
        Err(e) => return Err(stop_after_failed_stream(child, e).await),
    };
    let contents = match tap {
        Some(tap) => match tap.finish(tools).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(database = %db, error = %job.redactor.redact(&format!("{e:#}")), "could not summarise the archive's contents for the manifest");
                None
            }
        },
        None => None,
    };
    Ok((
        stats,
        SourceInfo {
            dump_tool: "pg_dump".into(),
            dump_tool_version: tools.version.clone(),
            server_version: Some(server.text),
            host: s.conn.host.clone(),
            neon_endpoint: s.conn.neon_endpoint(),
            collections: None,
        },
        contents,
    ))
}

async fn dump_mongo(
    job: &Job,
    s: &MongoSettings,
    tools: &MongoTools,
    db: &str,
    upload: &mut dyn Upload,
) -> anyhow::Result<(StreamStats, SourceInfo)> {
    let (stats, counts) = match s.format {
        MongoFormat::Zip => dump_mongo_zip(job, s, tools, db, upload).await?,
        MongoFormat::Archive => dump_mongo_archive(job, s, tools, db, upload).await?,
    };
    for (ns, n) in &counts {
        tracing::info!(artifact = %db, collection = %ns, documents = n, "dumped");
    }
    Ok((
        stats,
        SourceInfo {
            dump_tool: "mongodump".into(),
            dump_tool_version: tools.version.clone(),
            server_version: None,
            host: s.conn.host(),
            neon_endpoint: None,
            collections: Some(counts),
        },
    ))
}

/// mongodump into a private temp dir, then zip it into the upload. The dir is owned by this
/// future, so it is removed on success, failure and cancellation alike.
async fn dump_mongo_zip(
    job: &Job,
    s: &MongoSettings,
    tools: &MongoTools,
    db: &str,
    upload: &mut dyn Upload,
) -> anyhow::Result<(StreamStats, BTreeMap<String, u64>)> {
    mongo::check_free_space(&s.work_dir, s.min_free_mib)?;
    let dir = mongo::dump_to_dir(
        tools,
        &s.conn,
        s.conn.dump_database(db),
        &s.extra_args,
        &s.work_dir,
        job.redactor.clone(),
    )
    .await?;
    let root = dir.path().to_path_buf();
    let counts = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || mongo::count_documents(&root))
            .await
            .context("count task panicked")??
    };
    check_not_empty(s, db, &counts)?;
    let producer = job.seal(Box::new(move |sink| mongo::zip_tree(&root, sink)));
    let progress = Progress::for_terminal(format!("mongo {db}"));
    let streamed = pipeline::stream(job.storage.clone(), upload, producer, progress.clone()).await;
    progress.done();
    drop(dir);
    Ok((streamed?, counts))
}

/// Real mongodump exits 0 and writes nothing for a database that does not exist.
fn check_not_empty(
    s: &MongoSettings,
    db: &str,
    counts: &BTreeMap<String, u64>,
) -> Result<(), mongo::MongoError> {
    if counts.is_empty() && !s.allow_empty {
        let what = match s.conn.dump_database(db) {
            Some(d) => format!("database {d}"),
            None => "the databases the URI selects".to_string(),
        };
        return Err(mongo::MongoError::Empty(what));
    }
    Ok(())
}

/// `mongodump --archive --gzip` streamed straight into the upload, as pg_dump is.
async fn dump_mongo_archive(
    job: &Job,
    s: &MongoSettings,
    tools: &MongoTools,
    db: &str,
    upload: &mut dyn Upload,
) -> anyhow::Result<(StreamStats, BTreeMap<String, u64>)> {
    let mongo::ArchiveDump { mut child, config } = mongo::spawn_archive(
        tools,
        &s.conn,
        s.conn.dump_database(db),
        &s.extra_args,
        job.redactor.clone(),
    )?;
    let stdout = child.take_stdout().context("mongodump has no stdout")?;
    let counter = mongo::ArchiveCounter::start();
    let teed = counter.tee(stdout);
    let producer = job.seal(Box::new(move |sink| {
        pipeline::copy_encoded(teed, sink, Codec::Identity)
    }));
    let progress = Progress::for_terminal(format!("mongo {db}"));
    let streamed = pipeline::stream(job.storage.clone(), upload, producer, progress.clone()).await;
    progress.done();
    let result = match streamed {
        Ok(stats) => child.wait().await.map(|_| stats).map_err(Into::into),
        Err(e) => Err(stop_after_failed_stream(child, e).await),
    };
    // The config file holds the password: it goes once mongodump has exited, on every path.
    drop(config);
    let stats = result?;
    // A stream that is not a whole archive, or an empty one (still a valid archive), fails
    // here, before the upload completes.
    let counts = tokio::task::spawn_blocking(move || counter.finish())
        .await
        .context("count task panicked")??;
    check_not_empty(s, db, &counts)?;
    Ok((stats, counts))
}
