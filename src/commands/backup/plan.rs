//! Turning flags and environment into a validated run: every setting checked and every
//! artifact named before anything is contacted (exit 2 on any problem).

use super::*;

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
    /// A parallel (`PG_JOBS` above 1) directory dump: `key` is its TOC object.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub directory: bool,
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
            directory: false,
        }
    }
}

/// `BACKUP_GLOBALS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GlobalsMode {
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
pub(super) struct Plan<'a> {
    pub(super) destination: String,
    pub(super) stage: &'a str,
    pub(super) timestamp: &'a str,
    pub(super) timezone: String,
    pub(super) targets: &'a [Target],
}

#[derive(Clone)]
pub(super) struct PgSettings {
    pub(super) conn: PgConn,
    pub(super) compression: PgCompression,
    pub(super) level: i32,
    pub(super) threads: u32,
    pub(super) extra_args: Vec<String>,
    pub(super) pg_dump_path: Option<std::path::PathBuf>,
    /// `PG_JOBS`: 1 is the single archive streamed from pg_dump's stdout; more is a
    /// directory dump followed file by file (see `dir`).
    pub(super) jobs: u32,
    /// `BACKUP_SPOOL_BUDGET`: most bytes of a directory dump on local disk at once.
    pub(super) spool_budget: u64,
    /// Where the directory dump's private spool is created (`BACKUP_WORK_DIR`, else TMPDIR).
    pub(super) spool_parent: std::path::PathBuf,
}

#[derive(Clone)]
pub(super) struct MongoSettings {
    pub(super) conn: MongoConn,
    pub(super) format: MongoFormat,
    pub(super) extra_args: Vec<String>,
    pub(super) mongodump_path: Option<std::path::PathBuf>,
    /// Parent of the private dump dir in zip mode.
    pub(super) work_dir: std::path::PathBuf,
    pub(super) min_free_mib: u64,
    pub(super) allow_empty: bool,
}

/// Everything a run will do, validated (exit 2 on any problem) before anything is contacted.
pub(super) struct RunPlan {
    pub(super) store: Store,
    pub(super) redactor: Redactor,
    pub(super) pg: Option<PgSettings>,
    pub(super) mongo: Option<MongoSettings>,
    pub(super) timeout: Option<Duration>,
    pub(super) parallel: usize,
    pub(super) prune: Option<crate::commands::prune::Rules>,
    pub(super) verify_into: Option<String>,
    pub(super) globals: GlobalsMode,
    pub(super) verify_privileges: Privileges,
    pub(super) encrypt: Option<Recipients>,
    pub(super) notifier: Option<Notifier>,
    pub(super) timestamp: String,
    pub(super) targets: Vec<Target>,
}

/// Resolves and validates every setting and names every artifact; no I/O.
pub(super) fn plan(args: &BackupArgs) -> anyhow::Result<RunPlan> {
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
        Some(crate::commands::prune::rules(&args.keep)?)
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
pub(super) fn pg_settings(
    args: &BackupArgs,
    redactor: &mut Redactor,
) -> anyhow::Result<Option<PgSettings>> {
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
    if !ZSTD_LEVELS.contains(&args.zstd_level) || args.zstd_level == 0 {
        return Err(ConfigError::invalid(
            "PG_ZSTD_LEVEL",
            format!(
                "{} is not a zstd level (1-19, or -1 to -7: faster, larger output)",
                args.zstd_level
            ),
        )
        .into());
    }
    let threads = match args.zstd_threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        n => n,
    };
    let (jobs, spool_budget) = dir_dump_settings(args, &conn, compression)?;
    Ok(Some(PgSettings {
        conn,
        compression,
        level: args.zstd_level,
        threads,
        extra_args: args.pg_dump_args.clone(),
        pg_dump_path: args.pg.tools.pg_dump_path.clone(),
        jobs,
        spool_budget,
        spool_parent: args
            .mongo
            .work_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir),
    }))
}

/// zstd levels a backup may use. Negative ("fast") levels trade size for CPU: on pg_dump
/// archives -1 compressed about 2.3x faster than 1 but stored about 60 % more
/// (docs/performance.md), for hosts where compression, not the link, is the bottleneck. 0
/// would mean zstd's default (3), which is neither; above 19 decompression needs far more
/// memory.
const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=19;

/// Most pg_dump connections `--jobs` may open.
const MAX_JOBS: u32 = 32;

/// `PG_JOBS` and `BACKUP_SPOOL_BUDGET`, and what a parallel dump cannot go with: all refused
/// before anything runs.
fn dir_dump_settings(
    args: &BackupArgs,
    conn: &PgConn,
    compression: PgCompression,
) -> Result<(u32, u64), ConfigError> {
    let jobs = args.jobs;
    if !(1..=MAX_JOBS).contains(&jobs) {
        return Err(ConfigError::invalid(
            "PG_JOBS",
            format!("{jobs} is not a number of pg_dump jobs (1-{MAX_JOBS})"),
        ));
    }
    let budget = crate::commands::restore::jobs::parse_budget(&args.spool_budget)
        .map_err(|m| ConfigError::invalid("BACKUP_SPOOL_BUDGET", m))?;
    if jobs == 1 {
        return Ok((jobs, budget));
    }
    if compression == PgCompression::Pg {
        return Err(ConfigError::invalid(
            "PG_COMPRESSION",
            "pg cannot go with PG_JOBS above 1 (each file of a parallel dump is compressed by backhaul): use zstd or none",
        ));
    }
    if let Some(why) = pg::refused_dir_dump_arg(&args.pg_dump_args) {
        return Err(ConfigError::invalid("--pg-dump-arg", why));
    }
    if let Some(direct) = crate::config::postgres::pooler_host(&conn.host, conn.port) {
        return Err(ConfigError::invalid(
            "PG_JOBS",
            format!(
                "{} is a transaction pooler, which cannot share pg_dump's snapshot between its connections: back up through the direct host {direct}, or set PG_JOBS=1",
                conn.host
            ),
        ));
    }
    Ok((jobs, budget))
}

/// One target per database (and the cluster's globals), all under one timestamp.
pub(super) fn targets(
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
        let ext = match (s.compression, s.jobs > 1) {
            (PgCompression::Zstd, false) => ".dump.zst",
            (PgCompression::Pg | PgCompression::None, false) => ".dump",
            (PgCompression::Zstd, true) => ".zst",
            (PgCompression::Pg | PgCompression::None, true) => "",
        };
        let ext = format!("{ext}{suffix}");
        let compression = serde_json::to_value(s.compression)?;
        for db in &s.conn.databases {
            let key = if s.jobs > 1 {
                layout::dir_artifact_key(&prefix, &store.stage, db, timestamp, &ext)
            } else {
                layout::artifact_key(&prefix, &store.stage, Kind::Postgres, db, timestamp, &ext)
            };
            let mut t = Target::new(
                Kind::Postgres,
                db,
                key,
                compression.as_str().unwrap_or_default(),
                s.conn.url_for(db),
            );
            t.directory = s.jobs > 1;
            targets.push(t);
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

/// Validates the MongoDB settings (exit 2 on any problem) and registers the URI's secrets.
pub(super) fn mongo_settings(
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
