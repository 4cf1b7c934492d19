//! Resolution helpers shared by commands: turning the shared CLI groups into config.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::io::SyncIoBridge;
use tokio_util::sync::CancellationToken;

use crate::cli::{PgArgs, StoreArgs, UploadArgs};
use crate::config::postgres::{PgConn, PgInputs};
use crate::config::{self, non_empty, ConfigError, Destination, Zone};
use crate::read_path;
use crate::secret::{Redactor, Secret};
use crate::storage::{self, PartPlan, Storage};

/// Destination, stage and time zone, validated.
#[derive(Debug, Clone)]
pub struct Store {
    pub dest: Destination,
    /// The setting that named the destination (`--dest` or `S3_BUCKET`), for errors about it.
    pub dest_var: &'static str,
    pub stage: String,
    pub zone: Zone,
    pub plan: PartPlan,
    pub sse: storage::s3::Sse,
}

/// `--lock-days`/`BACKUP_LOCK_DAYS`: 1 to 36500 days (S3's limit is 100 years), S3 only.
fn object_lock(
    a: &UploadArgs,
    dest: &Destination,
) -> Result<Option<storage::s3::ObjectLock>, ConfigError> {
    let Some(days) = a.lock_days.filter(|d| *d != 0) else {
        return Ok(None);
    };
    if days > 36500 {
        return Err(ConfigError::invalid(
            "BACKUP_LOCK_DAYS",
            format!("{days} is more than 36500 days (100 years, S3's limit)"),
        ));
    }
    let mode = a.lock_mode.trim().to_ascii_uppercase();
    if mode != "GOVERNANCE" && mode != "COMPLIANCE" {
        return Err(ConfigError::invalid(
            "BACKUP_LOCK_MODE",
            format!("\"{}\" is not GOVERNANCE or COMPLIANCE", a.lock_mode),
        ));
    }
    if !matches!(dest, Destination::S3 { .. }) {
        return Err(ConfigError::invalid(
            "BACKUP_LOCK_DAYS",
            "needs an S3 destination: Object Lock is an S3 feature",
        ));
    }
    Ok(Some(storage::s3::ObjectLock { mode, days }))
}

impl Store {
    pub fn resolve(a: &StoreArgs) -> Result<Store, ConfigError> {
        Self::resolve_for_key(a, "latest")
    }

    /// As [`Store::resolve`]; a full artifact `key` names its own stage, so STAGE may be unset.
    pub fn resolve_for_key(a: &StoreArgs, key: &str) -> Result<Store, ConfigError> {
        let stage = non_empty(a.stage.clone());
        if let Some(s) = &stage {
            config::validate_stage(s, "STAGE")?;
        }
        let dest_given = non_empty(a.dest.clone());
        let bucket_given = non_empty(a.bucket.clone());
        if let (Some(d), Some(b)) = (&dest_given, &bucket_given) {
            return Err(ConfigError::invalid(
                "--dest",
                format!(
                    "{} and S3_BUCKET (--bucket) {} are both set: keep one of them",
                    config::quoted(d),
                    config::quoted(b)
                ),
            ));
        }
        let dest = Destination::resolve(
            dest_given.as_deref(),
            bucket_given.as_deref(),
            non_empty(a.prefix.clone()).as_deref(),
            a.s3_force_path_style,
        )?;
        let zone: Zone = a.timezone.parse()?;
        let from_key = || {
            (key != "latest")
                .then(|| crate::layout::parse_key(&dest.key_prefix(), key, &zone))
                .flatten()
                .map(|p| p.stage)
        };
        let stage = stage.or_else(from_key).ok_or_else(|| {
            ConfigError::missing("STAGE", "name the stage (e.g. STAGE=prod or --stage prod)")
        })?;
        config::validate_stage(&stage, "STAGE")?;
        Ok(Store {
            dest_var: if dest_given.is_some() {
                "--dest"
            } else {
                "S3_BUCKET"
            },
            dest,
            stage,
            zone,
            // Read commands write only small objects (verify's manifest update): the upload
            // settings below are `backup`'s.
            plan: part_plan(8, 4),
            sse: storage::s3::Sse::default(),
        })
    }

    /// `backup`'s upload settings: part size, parallel parts, server-side encryption.
    pub fn with_upload(mut self, a: &UploadArgs) -> Result<Store, ConfigError> {
        if (a.part_size_mib << 20) < storage::MIN_PART || a.part_size_mib > 5 * 1024 {
            return Err(ConfigError::invalid(
                "--part-size-mib",
                format!(
                    "{} must be between 5 and 5120 (S3 part limits)",
                    a.part_size_mib
                ),
            ));
        }
        if a.upload_concurrency == 0 || a.upload_concurrency > 64 {
            return Err(ConfigError::invalid(
                "--upload-concurrency",
                "must be between 1 and 64",
            ));
        }
        self.plan = part_plan(a.part_size_mib, a.upload_concurrency);
        self.sse = match non_empty(a.sse.clone()) {
            None => storage::s3::Sse::default(),
            Some(m) if m == "AES256" || m == "aws:kms" || m == "aws:kms:dsse" => storage::s3::Sse {
                mode: Some(m),
                kms_key_id: non_empty(a.sse_kms_key_id.clone()),
                ..Default::default()
            },
            Some(m) => {
                return Err(ConfigError::invalid(
                    "--sse",
                    format!("\"{m}\" is not AES256, aws:kms or aws:kms:dsse"),
                ))
            }
        };
        self.sse.lock = object_lock(a, &self.dest)?;
        Ok(self)
    }

    pub async fn open(&self) -> anyhow::Result<Arc<dyn Storage>> {
        storage::open(&self.dest, self.plan, self.sse.clone()).await
    }

    /// For commands that only read what backups exist: a `file://` destination that does not
    /// exist is a typo, not "no backups" (an empty listing with exit 0 would hide it).
    pub async fn open_existing(&self) -> anyhow::Result<Arc<dyn Storage>> {
        if let Destination::File { root, .. } = &self.dest {
            if !root.is_dir() {
                return Err(ConfigError::invalid(
                    "--dest",
                    format!(
                        "file://{} does not exist or is not a directory: name the directory the backups were written to",
                        root.display()
                    ),
                )
                .into());
            }
        }
        self.open().await
    }

    /// The artifact named by `key` (or `latest` matching `filter`) in this stage.
    pub async fn find(
        &self,
        storage: &Arc<dyn Storage>,
        key: &str,
        filter: &crate::catalog::Filter,
    ) -> anyhow::Result<crate::catalog::Entry> {
        match crate::backup_ref::resolve(
            storage,
            &self.dest.key_prefix(),
            &self.stage,
            &self.zone,
            key,
            filter,
        )
        .await
        {
            // A reference that fits several backups is input to fix: exit 2.
            Err(e @ crate::catalog::CatalogError::Ambiguous { .. }) => {
                let text = e.to_string();
                let message = text.strip_prefix(key).unwrap_or(&text).trim_start();
                Err(ConfigError::invalid(config::quoted(key), message).into())
            }
            r => Ok(r?),
        }
    }

    /// Key prefix of this stage's backups ("[prefix/]stage/").
    pub fn stage_prefix(&self) -> String {
        crate::layout::stage_prefix(&self.dest.key_prefix(), &self.stage)
    }
}

fn part_plan(part_size_mib: usize, concurrency: usize) -> PartPlan {
    let base = part_size_mib << 20;
    PartPlan {
        base,
        in_flight_budget: base * concurrency,
        max_in_flight: concurrency,
    }
}

/// Reads the PostgreSQL inputs; the password and the secret JSON come from the environment only.
pub fn pg_inputs(a: &PgArgs) -> PgInputs {
    PgInputs {
        url: non_empty(a.pg_url.clone()).map(Secret::new),
        secret_json: non_empty(std::env::var("POSTGRES_SECRET").ok()).map(Secret::new),
        host: non_empty(a.pg_host.clone()),
        port: non_empty(a.pg_port.clone()),
        databases: non_empty(a.pg_db.clone()),
        user: non_empty(a.pg_user.clone()),
        password: std::env::var("PG_DB_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
            .map(Secret::new),
        neon_endpoint_option: non_empty(a.neon_endpoint.clone()),
    }
}

pub fn pg_redactor(conn: &PgConn, redactor: &mut Redactor) {
    if let Some(p) = &conn.password {
        redactor.add(p);
    }
}

/// Parses `45m`, `2h`, `7d`, `90s`.
pub fn parse_duration(s: &str, var: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ConfigError::invalid(
                var,
                format!("\"{s}\" is not a duration like 90s, 45m, 2h or 7d"),
            )
        })
}

/// Feeds the object at `key` through the checks (see [`read_path::feed`]) into a new file at `path`,
/// for the restores that need a seekable local copy (`--jobs`, MongoDB). Runs on a blocking
/// thread that stops reading as soon as nobody waits for it any more (interrupted, or a
/// preflight beside it failed).
pub async fn download_to_file(
    storage: &Arc<dyn Storage>,
    key: &str,
    decode: read_path::Decode,
    expect: Option<read_path::Expect>,
    path: &Path,
    cancel: &CancellationToken,
) -> anyhow::Result<read_path::Fed> {
    let abandoned = read_path::Abandoned::default();
    let src = abandoned.reader(SyncIoBridge::new(storage.get(key).await?));
    let file_path = path.to_path_buf();
    let download = tokio::task::spawn_blocking(move || -> anyhow::Result<read_path::Fed> {
        let file = crate::private_fs::create_file(&file_path)
            .with_context(|| format!("creating {}", file_path.display()))?;
        Ok(read_path::feed(
            src,
            &decode,
            read_path::FileSink(file),
            expect.as_ref(),
            read_path::Consumer::Strict,
        )?)
    });
    tokio::select! {
        j = download => j.context("download task panicked")?,
        _ = cancel.cancelled() => Err(super::Interrupted.into()),
    }
}

/// `--kind`/`--database` of `list`, `restore`, `verify` and `prune`, as a catalog filter.
pub fn filter(
    kind: Option<&str>,
    database: Option<String>,
) -> Result<crate::catalog::Filter, ConfigError> {
    let kind = non_empty(kind.map(str::to_string))
        .map(|k| {
            k.parse::<crate::layout::Kind>()
                .map_err(|e| ConfigError::invalid("--kind", e))
        })
        .transpose()?;
    Ok(crate::catalog::Filter {
        kind,
        database: non_empty(database),
    })
}
