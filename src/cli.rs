//! The command line. Every option is defined once, here, with its environment fallback and
//! its help text: `backhaul <command> --help` is the reference documentation.
//!
//! Secrets (`PG_DB_PASSWORD`, `POSTGRES_SECRET`, `MONGO_CONNECTION_STRING`, URLs with
//! passwords) are accepted from the environment; their values are never shown in help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "backhaul",
    version,
    about = "Streams PostgreSQL and MongoDB backups into S3, and schedules itself on ECS Fargate."
)]
#[command(propagate_version = true, max_term_width = 100, after_help = ENV_ONLY)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr: JSON lines (CloudWatch-friendly) or human text; auto picks text on a terminal.
    #[arg(long, global = true, env = "BACKHAUL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, display_order = 1000)]
    pub log_format: LogFormat,

    /// Log filter (tracing syntax), e.g. `debug` or `backhaul=debug`.
    #[arg(
        long,
        global = true,
        env = "BACKHAUL_LOG",
        default_value = "info",
        display_order = 1000
    )]
    pub log: String,
}

/// A yes/no setting: true/false, 1/0 or yes/no (any case), nothing else: a typo such as
/// `maybe` is refused instead of meaning "on". Empty (`FOO=`, "not configured") is false.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err("expected true/false, 1/0 or yes/no".to_string()),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

// Parsed once per process; boxing the big variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Back up every configured database to S3 (or a directory).
    #[command(after_help = BACKUP_EXAMPLES)]
    #[command(mut_arg("bucket", |a| a.help("S3 bucket to write the backups to")))]
    Backup(BackupArgs),
    /// Restore a backup into a PostgreSQL database or MongoDB deployment.
    #[command(after_help = RESTORE_EXAMPLES)]
    Restore(RestoreArgs),
    /// Apply a run's saved cluster roles (memberships, role settings) to a cluster; safe to repeat.
    #[command(after_help = RESTORE_GLOBALS_EXAMPLES)]
    RestoreGlobals(RestoreGlobalsArgs),
    /// List backups, newest first.
    #[command(after_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Prove backups are intact (checksum, structure) and optionally restorable.
    #[command(after_help = VERIFY_EXAMPLES)]
    Verify(VerifyArgs),
    /// Delete old backups according to a retention policy.
    #[command(after_help = PRUNE_EXAMPLES)]
    Prune(PruneArgs),
    /// Register the ECS task definition and the EventBridge rule that runs backups on a schedule.
    #[command(after_help = SCHEDULE_EXAMPLES)]
    Schedule(ScheduleArgs),
    /// Remove the stage's EventBridge rule (and optionally its task definitions). Safe to repeat.
    #[command(after_help = UNSCHEDULE_EXAMPLES)]
    Unschedule(UnscheduleArgs),
    /// Run the stage's backup task once on Fargate now, optionally waiting for its exit code.
    #[command(after_help = RUN_TASK_EXAMPLES)]
    RunTask(RunTaskArgs),
    /// Show the stage's schedule, task definition and most recent backups.
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
    /// Show the log of the stage's latest task (or one task, or a summary of the last runs).
    #[command(after_help = LOGS_EXAMPLES)]
    Logs(LogsArgs),
}

/// Where backups live. Shared by every command that touches storage.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// S3 bucket the backups are in.
    #[arg(long, env = "S3_BUCKET")]
    pub bucket: Option<String>,

    /// Stage name, first key segment: dev, uat, prod... (a-z, 0-9 and -, not at either end).
    #[arg(long, env = "STAGE")]
    pub stage: Option<String>,

    /// Optional key prefix before the stage.
    #[arg(long, env = "BACKUP_PREFIX")]
    pub prefix: Option<String>,

    /// Instead of --bucket: s3://bucket/prefix or file:///dir (e.g. an EFS mount).
    #[arg(long, env = "BACKUP_DEST")]
    pub dest: Option<String>,

    /// Use path-style S3 addressing (MinIO, moto and other S3-compatible servers).
    #[arg(long, env = "S3_FORCE_PATH_STYLE", value_parser = parse_bool)]
    pub s3_force_path_style: bool,

    /// Time zone of the timestamps in keys: IANA name (Asia/Singapore) or offset (+08:00).
    #[arg(long, env = "BACKUP_TIMEZONE", default_value = "UTC")]
    pub timezone: String,
}

/// How `backup` writes objects. Only `backup` uploads, so only it has these.
#[derive(Args, Debug, Clone)]
pub struct UploadArgs {
    /// S3 server-side encryption for the objects written: AES256, aws:kms or aws:kms:dsse.
    #[arg(long, env = "S3_SSE")]
    pub sse: Option<String>,

    /// KMS key for --sse aws:kms.
    #[arg(long, env = "S3_SSE_KMS_KEY_ID", requires = "sse")]
    pub sse_kms_key_id: Option<String>,

    /// S3 Object Lock: retain each object written for this many days (the bucket must have
    /// Object Lock enabled); prune skips objects still retained.
    #[arg(long, env = "BACKUP_LOCK_DAYS")]
    pub lock_days: Option<u32>,

    /// Object Lock mode for --lock-days: GOVERNANCE (deletable with s3:BypassGovernanceRetention) or COMPLIANCE (by nobody).
    #[arg(long, env = "BACKUP_LOCK_MODE", default_value = "GOVERNANCE")]
    pub lock_mode: String,

    /// Size of the first upload parts in MiB (at least 5; later parts grow for huge streams).
    #[arg(long, env = "BACKHAUL_PART_SIZE_MIB", default_value_t = 8)]
    pub part_size_mib: usize,

    /// Upload parts sent concurrently (memory is about part size x this).
    #[arg(long, env = "BACKHAUL_UPLOAD_CONCURRENCY", default_value_t = 4)]
    pub upload_concurrency: usize,
}

#[derive(Args, Debug, Clone, Default)]
pub struct PgArgs {
    /// PostgreSQL URL; replaces every PG_DB_* variable and POSTGRES_SECRET.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub pg_url: Option<String>,

    /// PostgreSQL host.
    #[arg(long, env = "PG_DB_HOST")]
    pub pg_host: Option<String>,

    /// PostgreSQL port [default: 5432].
    #[arg(long, env = "PG_DB_PORT")]
    pub pg_port: Option<String>,

    /// Database name(s), comma separated: one artifact each.
    #[arg(long, env = "PG_DB_NAME")]
    pub pg_db: Option<String>,

    /// PostgreSQL user.
    #[arg(long, env = "PG_DB_USER")]
    pub pg_user: Option<String>,

    /// Neon endpoint id, as `endpoint%3Dep-x`, `endpoint=ep-x` or `ep-x`; derived from a *.neon.tech host when absent.
    #[arg(long, env = "NEON_DB_ENDPOINT_OPTION")]
    pub neon_endpoint: Option<String>,

    #[command(flatten)]
    pub tools: PgToolArgs,
}

/// The PostgreSQL client tools; `restore` and `verify` need them, not a connection.
#[derive(Args, Debug, Clone, Default)]
pub struct PgToolArgs {
    /// pg_dump binary; pg_restore, pg_dumpall and psql are taken from beside it [default: the
    /// newest under /usr/lib/postgresql/*/bin or on PATH].
    #[arg(long, env = "PG_DUMP_PATH")]
    pub pg_dump_path: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct MongoArgs {
    /// MongoDB connection string (holds the password: given to mongodump only through a pipe, --config /dev/fd/N, never a file).
    #[arg(long, env = "MONGO_CONNECTION_STRING", hide_env_values = true)]
    pub mongo_uri: Option<String>,

    /// MongoDB database name(s), comma separated: one artifact each. Unset: one artifact of everything the URI selects (all databases when it names none), as the old script did.
    #[arg(long, env = "MONGO_DB_NAME")]
    pub mongo_db: Option<String>,

    /// databases (one artifact per MONGO_DB_NAME entry) or uri (one artifact, named MONGO_DB_NAME, of everything the URI selects). Default: databases when MONGO_DB_NAME is set, else uri.
    #[arg(long, env = "MONGO_SCOPE")]
    pub mongo_scope: Option<String>,

    /// Accept a MongoDB dump with no collections (otherwise a missing or misspelled database fails the backup).
    #[arg(long, env = "MONGO_ALLOW_EMPTY", value_parser = parse_bool)]
    pub allow_empty: bool,

    /// mongodump binary; default: mongodump on PATH.
    #[arg(long, env = "MONGODUMP_PATH")]
    pub mongodump_path: Option<PathBuf>,

    /// zip (mongodump to a temp dir, zipped on the fly, as today) or archive (mongodump --archive --gzip, streamed).
    #[arg(long, env = "MONGO_FORMAT", default_value = "zip")]
    pub mongo_format: String,

    /// Extra mongodump option, repeatable (e.g. --mongodump-arg=--readPreference=secondary).
    #[arg(long = "mongodump-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub mongodump_args: Vec<String>,

    /// Where mongodump writes its tree in zip mode (a private temp dir is created inside).
    #[arg(long, env = "BACKUP_WORK_DIR")]
    pub work_dir: Option<PathBuf>,

    /// Minimum free space (MiB) in the work dir before a zip-format mongodump starts.
    #[arg(long, env = "BACKUP_MIN_FREE_MIB", default_value_t = 1024)]
    pub min_free_mib: u64,
}

/// What restoring a MongoDB artifact needs: the tool and somewhere to unpack a zip.
#[derive(Args, Debug, Clone, Default)]
pub struct MongoRestoreArgs {
    /// mongorestore binary; default: mongorestore beside MONGODUMP_PATH, else on PATH.
    #[arg(long, env = "MONGORESTORE_PATH")]
    pub mongorestore_path: Option<PathBuf>,

    /// Only to find mongorestore beside it (task definitions set it for backups).
    #[arg(long, env = "MONGODUMP_PATH", hide = true)]
    pub mongodump_path: Option<PathBuf>,

    /// Where a zip artifact is unpacked for mongorestore (a private temp dir is created inside).
    #[arg(long, env = "BACKUP_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Only {
    Postgres,
    Mongo,
}

#[derive(Args, Debug, Clone, Default)]
pub struct KeepArgs {
    /// Keep the N newest backups.
    #[arg(long, env = "KEEP_LAST", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest backup of each of the last N hours.
    #[arg(long, env = "KEEP_HOURLY", default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest backup of each of the last N days.
    #[arg(long, env = "KEEP_DAILY", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest backup of each of the last N ISO weeks.
    #[arg(long, env = "KEEP_WEEKLY", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest backup of each of the last N months.
    #[arg(long, env = "KEEP_MONTHLY", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest backup of each of the last N years.
    #[arg(long, env = "KEEP_YEARLY", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Never delete an object without a manifest (nor a run's globals without a database backup) younger than this: a backup may still be writing it.
    #[arg(
        long,
        env = "PRUNE_GRACE",
        default_value = "24h",
        value_name = "DURATION"
    )]
    pub grace: String,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub upload: UploadArgs,
    #[command(flatten)]
    pub pg: PgArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,

    /// PostgreSQL compression: zstd (.dump.zst, fastest), pg (pg_dump's own, plain .dump as today), none.
    #[arg(long, env = "PG_COMPRESSION", default_value = "zstd")]
    pub compression: String,

    /// zstd level (1-19, or -1 to -7). 1 is the default because it measured fastest *and*
    /// smallest of the positive levels on pg_dump archives (bench/RESULTS-2026-11-23.md):
    /// higher levels only cost CPU here. Negative levels are faster still and store more.
    #[arg(
        long,
        env = "PG_ZSTD_LEVEL",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    pub zstd_level: i32,

    /// zstd worker threads; 0 = one per CPU.
    #[arg(long, env = "PG_ZSTD_THREADS", default_value_t = 0)]
    pub zstd_threads: u32,

    /// Extra pg_dump option, repeatable (e.g. --pg-dump-arg=--exclude-table=audit_*).
    #[arg(long = "pg-dump-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub pg_dump_args: Vec<String>,

    /// PostgreSQL: parallel pg_dump connections (1-32). Above 1, pg_dump writes its directory
    /// format into a private spool and each file is uploaded as it is written; needs a direct
    /// (not transaction-pooled) endpoint.
    #[arg(long, env = "PG_JOBS", default_value_t = 1)]
    pub jobs: u32,

    /// With --jobs above 1: most disk the spool of dumped, not yet uploaded bytes may take
    /// (e.g. 512MiB, min 64MiB); pg_dump is paused while it is full. In BACKUP_WORK_DIR, else TMPDIR.
    #[arg(
        long,
        env = "BACKUP_SPOOL_BUDGET",
        value_name = "SIZE",
        default_value = "256MiB"
    )]
    pub spool_budget: String,

    /// Back up only this kind of target.
    #[arg(long, value_enum)]
    pub only: Option<Only>,

    /// Targets backed up at once.
    #[arg(long, env = "BACKUP_PARALLEL", default_value_t = 1)]
    pub parallel: usize,

    /// Give up on a target after this long (e.g. 45m, 2h); default: no limit.
    #[arg(long, env = "BACKUP_TIMEOUT")]
    pub timeout: Option<String>,

    /// Print the plan as JSON (targets, redacted URLs, keys) without connecting or uploading.
    #[arg(long)]
    pub dry_run: bool,

    /// After each PostgreSQL backup, restore it into this scratch database and record the result.
    #[arg(long, env = "BACKUP_VERIFY_INTO", hide_env_values = true)]
    pub verify_into: Option<String>,

    /// --verify-into without owners (pg_restore --no-owner), for a scratch cluster lacking the roles.
    #[arg(long, env = "BACKUP_VERIFY_NO_OWNER", value_parser = parse_bool)]
    pub verify_no_owner: bool,

    /// --verify-into without grants (pg_restore --no-acl).
    #[arg(long, env = "BACKUP_VERIFY_NO_ACL", value_parser = parse_bool)]
    pub verify_no_acl: bool,

    /// Also store the cluster's roles, memberships and role settings (pg_dumpall
    /// --globals-only) beside the dumps: auto (on; if the server forbids reading password
    /// hashes, without passwords; any other failure is reported but does not fail the run),
    /// on (a failure fails the run), off.
    #[arg(long, env = "BACKUP_GLOBALS", default_value = "auto")]
    pub globals: String,

    /// After a successful run, apply the --keep-* retention policy to the stage.
    #[arg(long, env = "BACKUP_PRUNE", value_parser = parse_bool)]
    pub prune: bool,

    #[command(flatten)]
    pub keep: KeepArgs,

    /// Encrypt every artifact to this age recipient (age1…), repeatable; the key gets `.age`.
    /// Only public keys are needed here: restore/verify take the identity with --identity.
    #[arg(
        long = "encrypt-to",
        env = "BACKUP_ENCRYPT_TO",
        value_name = "RECIPIENT",
        value_delimiter = ','
    )]
    pub encrypt_to: Vec<String>,

    /// POST the run's result here (healthchecks.io style: URL on success, URL/fail on failure, URL/start first).
    #[arg(long, env = "BACKHAUL_NOTIFY_URL", hide_env_values = true)]
    pub notify_url: Option<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup: its id from `backhaul list`, its key, a key timestamp (with --database when
    /// the run saved several), or `latest` for the newest of --stage/--kind/--database.
    pub key: String,

    /// Target: a postgresql:// URL or a mongodb:// URI (password is read from the URL; never shown).
    #[arg(long, env = "RESTORE_TO", hide_env_values = true)]
    pub to: String,

    /// With `latest` or a timestamp: which database's backups to pick from. MongoDB restores go into the database named in the --to URI's path, else into the one dumped.
    #[arg(long)]
    pub database: Option<String>,

    /// With `latest` or a timestamp: postgres or mongo.
    #[arg(long)]
    pub kind: Option<String>,

    /// Drop existing objects first (required when the target is not empty). MongoDB: mongorestore --drop (each collection in the dump is replaced); without it, a document that already exists fails the restore.
    #[arg(long)]
    pub clean: bool,

    /// Parallel pg_restore processes, working while the object downloads: definitions, then each table's data as it arrives, then indexes and privileges once the checksum matched. Not one transaction: a failure midway leaves the target partly restored (the error says what it holds).
    #[arg(long)]
    pub jobs: Option<u32>,

    /// With --jobs: most disk the spool of downloaded, not yet restored data may hold (e.g. 2GiB, 500MiB); the download waits when it is full. Default: half the space free in the temp directory.
    #[arg(long, env = "RESTORE_SPOOL_BUDGET", value_name = "SIZE")]
    pub spool_budget: Option<String>,

    /// Give up when a lock the restore needs is held by another session for longer than this
    /// (e.g. 30s, 5m; 0 waits forever); while it waits, the log names the relation and the
    /// session holding it.
    #[arg(long, env = "RESTORE_LOCK_TIMEOUT", default_value = "1m")]
    pub lock_timeout: String,

    #[command(flatten)]
    pub privileges: PrivilegeArgs,

    /// Restore an object backhaul wrote even though its manifest is missing or unreadable, so its checksum cannot be checked (refused otherwise).
    #[arg(long)]
    pub allow_unverified: bool,

    /// age identity file (AGE-SECRET-KEY-1… lines, # comments) for encrypted (.age) artifacts.
    #[arg(long, env = "BACKUP_AGE_IDENTITY_FILE", value_name = "FILE")]
    pub identity: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub pg: PgToolArgs,
    #[command(flatten)]
    pub mongo: MongoRestoreArgs,
}

/// Opt-outs from restoring owners and privileges as they were (pg_restore's defaults).
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct PrivilegeArgs {
    /// Do not restore object owners: everything belongs to the restoring role. For restoring
    /// as a different, non-superuser role (managed databases) whose cluster lacks the owners.
    #[arg(long, env = "RESTORE_NO_OWNER", value_parser = parse_bool)]
    pub no_owner: bool,

    /// Do not restore GRANT/REVOKE and default privileges (pg_restore --no-acl), e.g. when
    /// the grantees do not exist in the target cluster.
    #[arg(long, env = "RESTORE_NO_ACL", value_parser = parse_bool)]
    pub no_acl: bool,
}

#[derive(Args, Debug)]
pub struct RestoreGlobalsArgs {
    /// Globals artifact key (…_PGSQL/globals_<stage>_<ts>.sql.zst), or `latest`.
    #[arg(default_value = "latest")]
    pub key: String,

    /// Cluster to apply them to: a postgresql:// URL of any of its databases, as a role that
    /// may create roles. Existing roles are altered, never dropped; the connecting role and
    /// the bootstrap superuser are left as they are.
    #[arg(long, env = "RESTORE_TO", hide_env_values = true)]
    pub to: Option<String>,

    /// Print the statements that would run (passwords masked) and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Apply globals whose manifest is missing or unreadable, so their checksum cannot be checked (refused otherwise).
    #[arg(long)]
    pub allow_unverified: bool,

    /// age identity file for encrypted (.age) artifacts.
    #[arg(long, env = "BACKUP_AGE_IDENTITY_FILE", value_name = "FILE")]
    pub identity: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub pg: PgToolArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this backup: an id (as in the ID column), a key, a key timestamp, or `latest`.
    pub backup: Option<String>,
    /// Only this kind: postgres or mongo.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this database.
    #[arg(long)]
    pub database: Option<String>,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also show each backup's Object Lock (mode and retain-until, legal hold): one HEAD
    /// request per backup, so not done unless asked.
    #[arg(long)]
    pub locks: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The backup: an id from `backhaul list`, a key, a key timestamp or `latest`; omit with --since.
    pub key: Option<String>,
    /// Verify every backup newer than this (e.g. 7d, 24h).
    #[arg(long)]
    pub since: Option<String>,
    /// Only this kind: postgres or mongo.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this database.
    #[arg(long)]
    pub database: Option<String>,
    /// Also restore into this scratch database/deployment and compare it with the backup
    /// (row counts; PostgreSQL: objects, owners and ACL entries against the manifest).
    #[arg(long, env = "VERIFY_RESTORE_INTO", hide_env_values = true)]
    pub restore_into: Option<String>,
    #[command(flatten)]
    pub privileges: PrivilegeArgs,
    /// age identity file (AGE-SECRET-KEY-1… lines, # comments) for encrypted (.age) artifacts.
    #[arg(long, env = "BACKUP_AGE_IDENTITY_FILE", value_name = "FILE")]
    pub identity: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub pg: PgToolArgs,
    #[command(flatten)]
    pub mongo: MongoRestoreArgs,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Only this kind: postgres or mongo.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this database.
    #[arg(long)]
    pub database: Option<String>,
    /// Print what would be kept and deleted, with reasons, and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also abort writes under the stage that never finished (multipart uploads of killed
    /// runs; temp files on a file:// destination) begun more than this long ago (24h, 90m).
    /// Without --keep-* rules, only this is done.
    #[arg(long, env = "PRUNE_ABORT_INCOMPLETE_OLDER_THAN")]
    pub abort_incomplete_older_than: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// The secrets that are never flags; listed where `--help` would otherwise not say so.
const ENV_ONLY: &str = "Environment only (a flag would show the secret in `ps`):
  PG_DB_PASSWORD     the PostgreSQL password of PG_DB_USER (--pg-user)
  POSTGRES_SECRET    Secrets Manager JSON {\"username\", \"password\", \"host\", \"port\",
                     \"dbname\"}; each PG_DB_* variable overrides its field";

const BACKUP_EXAMPLES: &str = "Examples:
  # The shell script's env contract, unchanged:
  S3_BUCKET=acme-backups STAGE=prod \\
  PG_DB_HOST=db PG_DB_USER=app PG_DB_PASSWORD=... PG_DB_NAME=app,audit \\
  backhaul backup

  # Neon, from a URL, plus MongoDB, showing the plan only:
  DATABASE_URL=postgresql://app:...@ep-aged-morning-26453078.us-east-2.aws.neon.tech/app \\
  MONGO_CONNECTION_STRING=mongodb+srv://... MONGO_DB_NAME=shop \\
  backhaul backup --stage prod --bucket acme-backups --dry-run

  # To a mounted volume, pg_dump's own compression (plain .dump, as today):
  backhaul backup --dest file:///mnt/efs/backups --stage dev --compression pg

Environment only (a flag would show the secret in `ps`):
  PG_DB_PASSWORD     the PostgreSQL password of PG_DB_USER (--pg-user)
  POSTGRES_SECRET    Secrets Manager JSON {\"username\", \"password\", \"host\", \"port\",
                     \"dbname\"}; each PG_DB_* variable overrides its field";

const RESTORE_EXAMPLES: &str = "Examples:
  backhaul restore latest --stage prod --database app \\
    --to postgresql://app@localhost/app_restored
  backhaul restore 3f9a1c2e --stage prod --to postgresql://app@localhost/app_restored
  backhaul restore 2024-03-09_07h05m03s --stage prod --database app \\
    --to postgresql://app@localhost/app_restored
  backhaul restore --to \"$SCRATCH_URL\" --clean \\
    prod/2024-03-09_07h05m03s_PGSQL/backup_prod_app_2024-03-09_07h05m03s.dump.zst
  backhaul restore latest --stage prod --kind mongo --database shop \\
    --to mongodb://localhost:27017 --clean

  # As a non-superuser of a managed database (objects owned by the restoring role):
  backhaul restore latest --stage prod --database app --no-owner --no-acl \\
    --to postgresql://app@app.cluster-x.eu-west-1.rds.amazonaws.com/app";

const RESTORE_GLOBALS_EXAMPLES: &str = "Examples:
  # Review, then create the roles a backup needs in a new cluster, then restore:
  backhaul restore-globals latest --stage prod --dry-run
  backhaul restore-globals latest --stage prod \\
    --to postgresql://postgres@new-cluster/postgres
  backhaul restore latest --stage prod --database app \\
    --to postgresql://postgres@new-cluster/app";

const LIST_EXAMPLES: &str = "Examples:
  backhaul list --stage prod
  backhaul list --stage prod 2024-03-09_07h05m03s    # one run's backups
  backhaul list --stage prod --kind postgres --database app --json";

const VERIFY_EXAMPLES: &str = "Examples:
  backhaul verify latest --stage prod --database app
  backhaul verify --since 7d --stage prod
  backhaul verify latest --stage prod --database app \\
    --restore-into postgresql://verify@scratch/verify";

const PRUNE_EXAMPLES: &str = "Examples:
  backhaul prune --stage prod --keep-daily 7 --keep-weekly 4 --keep-monthly 12 \\
    --dry-run
  backhaul prune --stage dev --keep-last 3
  backhaul prune --stage prod --abort-incomplete-older-than 24h";

/// Where a Fargate task runs. Shared by `schedule` and `run-task`.
#[derive(Args, Debug, Clone, Default)]
pub struct NetworkArgs {
    /// ECS cluster name or ARN [default: backhaul-<stage>].
    #[arg(long, env = "ECS_CLUSTER")]
    pub cluster: Option<String>,

    /// Subnet ids, comma separated (private subnets need a NAT or VPC endpoints).
    #[arg(long, env = "ECS_SUBNETS", value_delimiter = ',')]
    pub subnets: Vec<String>,

    /// Security group ids, comma separated.
    #[arg(long, env = "ECS_SECURITY_GROUPS", value_delimiter = ',')]
    pub security_groups: Vec<String>,

    /// Give the task a public IP (needed in public subnets without a NAT to pull the image).
    #[arg(long, env = "ECS_ASSIGN_PUBLIC_IP", value_parser = parse_bool)]
    pub assign_public_ip: bool,

    /// Fargate platform version.
    #[arg(long, env = "ECS_PLATFORM_VERSION", default_value = "LATEST")]
    pub platform_version: String,
}

#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// Stage name: names the task family, rule and log group (a-z, 0-9 and -, not at either end).
    #[arg(long, env = "STAGE")]
    pub stage: Option<String>,

    /// EventBridge schedule: rate(1 day) or cron(0 3 * * ? *) (UTC) [default: the stack's, else cron(0 3 * * ? *)].
    #[arg(long, env = "BACKUP_SCHEDULE")]
    pub schedule: Option<String>,

    /// Container image, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/backhaul:1.4.0.
    #[arg(long, env = "BACKHAUL_IMAGE")]
    pub image: Option<String>,

    #[command(flatten)]
    pub network: NetworkArgs,

    /// Role ECS uses to pull the image, read secrets and write logs.
    #[arg(long, env = "ECS_EXECUTION_ROLE_ARN")]
    pub execution_role_arn: Option<String>,

    /// Role the backup itself runs as (needs S3 access to the bucket); required, or from the stack.
    #[arg(long, env = "ECS_TASK_ROLE_ARN")]
    pub task_role_arn: Option<String>,

    /// Role EventBridge uses to run the task (ecs:RunTask, iam:PassRole).
    #[arg(long, env = "EVENTS_ROLE_ARN")]
    pub events_role_arn: Option<String>,

    /// Task CPU units (256, 512, 1024, 2048, 4096, 8192, 16384).
    #[arg(long, env = "ECS_CPU", default_value_t = 512)]
    pub cpu: u32,

    /// Task memory in MiB, valid for --cpu (e.g. 1024-4096 with --cpu 512).
    #[arg(long, env = "ECS_MEMORY", default_value_t = 1024)]
    pub memory: u32,

    /// Fargate ephemeral storage in GiB (21-200) [default: Fargate's 20]. Zip-mode MongoDB
    /// dumps are written to disk before they are zipped: size it above the largest dump.
    #[arg(long, env = "ECS_EPHEMERAL_STORAGE_GIB")]
    pub ephemeral_storage_gib: Option<u32>,

    /// Plaintext environment variable for the task, KEY=VALUE, repeatable; wins over --env-file.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// File of KEY=VALUE lines (# comments, blank lines, optional quotes) added to the task environment.
    #[arg(long, env = "BACKHAUL_ENV_FILE")]
    pub env_file: Option<PathBuf>,

    /// Secret for the task, KEY=<Secrets Manager ARN>[:<json-key>:<version-stage>:<version-id>],
    /// KEY=<SSM parameter ARN> or KEY=<SSM parameter name>; repeatable.
    #[arg(long = "secret", value_name = "KEY=ARN")]
    pub secrets: Vec<String>,

    /// Allow plaintext --env values that look like secrets (names with PASSWORD, SECRET, TOKEN,
    /// PRIVATE_KEY, or URLs with a password).
    #[arg(long)]
    pub force_plaintext_env: bool,

    /// CloudWatch log group for the task (must exist) [default: /backhaul/<stage>].
    #[arg(long, env = "ECS_LOG_GROUP")]
    pub log_group: Option<String>,

    /// Region of the log group [default: the SDK region].
    #[arg(long, env = "ECS_LOG_REGION")]
    pub log_region: Option<String>,

    /// awslogs stream prefix; streams are <prefix>/backhaul/<task id>.
    #[arg(long, env = "ECS_LOG_STREAM_PREFIX", default_value = "backhaul")]
    pub log_stream_prefix: String,

    /// backhaul command line the task runs, split on whitespace.
    #[arg(long, env = "BACKHAUL_TASK_COMMAND", default_value = "backup")]
    pub command: String,

    /// Read cluster, image, network, roles, log group, schedule, stage, S3_BUCKET and database
    /// secrets from this CloudFormation stack's outputs (infra/backhaul.yaml); flags win.
    #[arg(long, env = "BACKHAUL_STACK")]
    pub from_stack: Option<String>,

    /// Print the task definition, rule and target as JSON without changing anything (with
    /// --from-stack the stack is still read).
    #[arg(long)]
    pub dry_run: bool,

    /// Run the schedule in this IANA time zone (Asia/Singapore) with EventBridge Scheduler
    /// instead of a UTC rule, and set the task's BACKUP_TIMEZONE to it so keys follow the same
    /// zone [default: the task's BACKUP_TIMEZONE; UTC keeps the rule].
    #[arg(long, env = "BACKUP_TIMEZONE")]
    pub timezone: Option<String>,

    /// SQS queue ARN that receives runs Scheduler could not start (uses Scheduler, even in UTC).
    #[arg(long, env = "BACKHAUL_DEAD_LETTER_ARN")]
    pub dead_letter_arn: Option<String>,

    /// Times Scheduler retries a run it could not start (0-185), within an hour of its time.
    #[arg(long, env = "BACKHAUL_SCHEDULE_RETRIES", default_value_t = 3)]
    pub retry_attempts: u32,

    /// SNS topic told when backups stop: creates the CloudWatch alarm backhaul-<stage>-no-backup
    /// (no successful backup for the schedule's longest gap plus --alarm-grace) and the
    /// EventBridge rule backhaul-<stage>.failed (a task that fails or cannot start) [default:
    /// the stack's AlarmTopicArn].
    #[arg(long, env = "ALARM_TOPIC_ARN")]
    pub alarm_topic_arn: Option<String>,

    /// Time the no-backup alarm allows beyond the schedule's longest gap (a run's own duration).
    #[arg(
        long,
        env = "ALARM_GRACE",
        default_value = "2h",
        value_name = "DURATION"
    )]
    pub alarm_grace: String,
}

#[derive(Args, Debug)]
pub struct UnscheduleArgs {
    /// Stage whose rule backhaul-<stage> (and alarm and failure rule, if any) is removed.
    #[arg(long, env = "STAGE")]
    pub stage: Option<String>,

    /// Also deregister every active revision of the backhaul-<stage> task family.
    #[arg(long, env = "BACKHAUL_DEREGISTER", value_parser = parse_bool)]
    pub deregister: bool,
}

#[derive(Args, Debug)]
pub struct RunTaskArgs {
    /// Stage whose task family (latest revision) and rule target are used.
    #[arg(long, env = "STAGE")]
    pub stage: Option<String>,

    /// Network flags override the rule target's; they are required when there is no rule.
    #[command(flatten)]
    pub network: NetworkArgs,

    /// Extra environment for this run only, KEY=VALUE, repeatable (e.g. --env BACKUP_PARALLEL=2).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Wait until the task stops and exit with its container's exit code.
    #[arg(long)]
    pub wait: bool,

    /// How often --wait polls DescribeTasks.
    #[arg(
        long,
        env = "BACKHAUL_POLL_INTERVAL",
        default_value = "2s",
        hide = true
    )]
    pub poll_interval: String,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// Only check that every database of the stage has a good backup (checksummed, not failed
    /// verification) younger than the schedule's longest gap plus --grace, or --max-age: exit
    /// 0 if so, else 1 with one line per overdue or failing database.
    #[arg(long, conflicts_with = "json")]
    pub check: bool,

    /// With --check: the age a good backup may reach, instead of reading the schedule (no
    /// AWS scheduling needed, e.g. 26h).
    #[arg(long, value_name = "DURATION", requires = "check")]
    pub max_age: Option<String>,

    /// With --check: time allowed beyond the schedule's longest gap (a run's own duration).
    #[arg(
        long,
        env = "ALARM_GRACE",
        default_value = "2h",
        value_name = "DURATION"
    )]
    pub grace: String,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    /// Text on a terminal, JSON lines otherwise.
    Auto,
    Json,
    Text,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Stage whose task family backhaul-<stage> is shown.
    #[arg(long, env = "STAGE")]
    pub stage: Option<String>,

    /// ECS cluster name or ARN [default: the schedule's, else backhaul-<stage>].
    #[arg(long, env = "ECS_CLUSTER")]
    pub cluster: Option<String>,

    /// This task (id or ARN) instead of the latest one.
    #[arg(long, conflicts_with = "runs")]
    pub task: Option<String>,

    /// Summaries of the last N runs (start, end, exit code, artifacts) instead of a log.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: Option<u32>,

    /// Keep printing new lines until the task stops.
    #[arg(long, short = 'f', conflicts_with = "runs")]
    pub follow: bool,

    /// Output: JSON lines as the task wrote them, or text for people; auto picks text on a terminal.
    #[arg(long, value_enum, default_value_t = OutputFormat::Auto)]
    pub format: OutputFormat,

    /// How often --follow polls.
    #[arg(
        long,
        env = "BACKHAUL_POLL_INTERVAL",
        default_value = "2s",
        hide = true
    )]
    pub poll_interval: String,
}

const LOGS_EXAMPLES: &str = "Examples:
  backhaul logs --stage prod                 # the latest task's log (running or stopped)
  backhaul logs --stage prod --follow        # tail a running task until it stops
  backhaul logs --stage prod --runs 7        # last 7 runs: start, end, exit code, artifacts
  backhaul logs --stage prod --task 0f1e2d3c4b5a --format json";

const SCHEDULE_EXAMPLES: &str = "Examples:
  # Everything from the CloudFormation stack (infra/backhaul.yaml), 03:00 UTC daily:
  backhaul schedule --from-stack backhaul-prod

  # Explicit settings; the database password stays in Secrets Manager:
  PG_SECRET=arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf
  backhaul schedule --stage prod --schedule 'cron(0 3 * * ? *)' \\
    --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/backhaul:1.4.0 \\
    --subnets subnet-0a1,subnet-0b2 --security-groups sg-0c3 \\
    --execution-role-arn arn:aws:iam::123456789012:role/backhaul-exec \\
    --task-role-arn arn:aws:iam::123456789012:role/backhaul-task \\
    --events-role-arn arn:aws:iam::123456789012:role/backhaul-events \\
    --env S3_BUCKET=acme-backups --env-file prod.env \\
    --secret POSTGRES_SECRET=$PG_SECRET

  # Review the exact requests, sending nothing:
  backhaul schedule --from-stack backhaul-dev --schedule 'rate(6 hours)' --dry-run

  # 02:00 Singapore time, with EventBridge Scheduler (the rule is replaced):
  backhaul schedule --from-stack backhaul-prod --schedule 'cron(0 2 * * ? *)' \\
    --timezone Asia/Singapore";

const UNSCHEDULE_EXAMPLES: &str = "Examples:
  backhaul unschedule --stage dev
  backhaul unschedule --stage dev --deregister";

const RUN_TASK_EXAMPLES: &str = "Examples:
  # Run the scheduled backup now and wait for the result:
  backhaul run-task --stage prod --wait

  # Without a schedule, or elsewhere:
  backhaul run-task --stage dev --subnets subnet-0a1 --security-groups sg-0c3 \\
    --env BACKUP_PARALLEL=2";

const STATUS_EXAMPLES: &str = "Examples:
  backhaul status --stage prod
  backhaul status --stage prod --bucket acme-backups --json

  # For a monitor or cron: exit 1 naming each database without a recent good backup:
  backhaul status --stage prod --check
  backhaul status --stage dev --dest file:///mnt/efs/backups --check --max-age 26h";
