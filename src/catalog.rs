//! What is in the store: artifact keys read back through [`layout::parse_key`], joined with
//! their manifests. `list`, `restore latest`, `verify` and `prune` all start here, so they
//! agree on what "the backups of a stage" are.
//!
//! Objects the old shell script wrote parse like ours but have no manifest; they are real
//! backups and are listed with `manifest: None` rather than skipped.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::Zone;
use crate::layout::{self, Kind, ParsedKey};
use crate::manifest::{self, Manifest};
use crate::storage::{Storage, StorageError};

/// Manifests fetched at once: enough to hide request latency on a big stage, few enough not
/// to trip S3 request-rate limits or exhaust sockets.
const MANIFEST_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("manifest {key} is not valid: {source}")]
    BadManifest {
        key: String,
        source: serde_json::Error,
    },
    /// A manifest this version cannot vouch for: a newer format, or one whose shape does not
    /// fit its key (a directory dump's file list on a single-file key, or none on a directory).
    #[error("manifest {key}: {why}")]
    UnsupportedManifest { key: String, why: String },
    #[error("no backup matches {0}")]
    NotFound(String),
    #[error("{0} is not a backup key in this layout ([prefix/]<stage>/<ts>_PGSQL|_MONGO/<file>), an id from `backhaul list`, a key timestamp or `latest`")]
    NotAnArtifact(String),
    #[error("{reference} matches {} backups: {}; give more of the id, the full key, or --database/--kind", .count, .matches)]
    Ambiguous {
        reference: String,
        count: usize,
        /// `id key` pairs, comma separated.
        matches: String,
    },
}

/// One artifact, newest first in listings.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub parsed: ParsedKey,
    /// Bytes of the object (0 when it is missing).
    pub size: u64,
    pub manifest: Option<Manifest>,
    /// What is wrong with this entry, if anything: every command shows it as a row of its
    /// own and carries on with the others.
    pub problem: Option<Problem>,
    /// When the object (or, for a missing object, its manifest) was last written.
    pub last_modified: Option<DateTime<Utc>>,
    /// The object's metadata says backhaul wrote it (asked with HEAD only where it matters:
    /// an object without a readable manifest that is about to be restored).
    pub written_by_backhaul: bool,
}

/// An entry that cannot be trusted as it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// The manifest exists but could not be read or parsed.
    ManifestUnreadable(String),
    /// A manifest whose object is gone: a lost backup.
    ObjectMissing,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::ManifestUnreadable(why) => write!(f, "manifest unreadable: {why}"),
            Problem::ObjectMissing => f.write_str("object missing"),
        }
    }
}

/// A restore refused: backhaul wrote the object, and nothing can check its bytes.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {what}, so its checksum cannot be checked (backhaul wrote this object and a manifest with it): refusing to restore unverified bytes; pass --allow-unverified to restore it anyway")]
pub struct Unverified {
    pub key: String,
    pub what: String,
}

impl Entry {
    /// What the stored object must hash to, from its manifest (none for a seed-script object).
    pub fn expectation(&self) -> Option<crate::read_path::Expect> {
        self.manifest.as_ref().map(|m| crate::read_path::Expect {
            sha256: m.sha256.clone(),
            size: m.stored_bytes,
        })
    }

    pub fn manifest_key(&self) -> String {
        layout::manifest_key(&self.key)
    }

    /// `None` when never verified, else the recorded outcome.
    pub fn verified(&self) -> Option<bool> {
        self.manifest
            .as_ref()
            .and_then(|m| m.verification.as_ref())
            .map(|v| v.ok)
    }

    /// Has a readable manifest and its object: the only kind of entry whose bytes can be
    /// checked, and so the only kind prune counts as a good backup.
    pub fn checkable(&self) -> bool {
        self.manifest.is_some() && self.problem.is_none()
    }

    /// Whether a restore may go on. An object with a readable manifest is checked as it
    /// streams. One without, that backhaul wrote (its metadata says so, or it has a manifest
    /// that cannot be read), is refused unless `allow_unverified`. The old script's objects
    /// never had a manifest: restored as before, with a warning.
    pub fn trust(&self, allow_unverified: bool) -> Result<(), Unverified> {
        if self.manifest.is_some() {
            return Ok(());
        }
        let what = match &self.problem {
            Some(p @ Problem::ManifestUnreadable(_)) => Some(format!("its {p}")),
            Some(Problem::ObjectMissing) => None,
            // The old script never saved globals: those are always ours.
            None if self.written_by_backhaul || self.parsed.globals => {
                Some("its manifest is missing".to_string())
            }
            None => None,
        };
        match what {
            Some(what) if !allow_unverified => Err(Unverified {
                key: self.key.clone(),
                what,
            }),
            Some(what) => {
                tracing::warn!(key = %self.key, "{what}: restoring without a checksum check (--allow-unverified)");
                Ok(())
            }
            None => {
                tracing::warn!(key = %self.key, "no manifest (written by the old script?): restoring without a checksum check");
                Ok(())
            }
        }
    }
}

/// Which artifacts a command is about.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub kind: Option<Kind>,
    pub database: Option<String>,
}

impl Filter {
    pub fn matches(&self, p: &ParsedKey) -> bool {
        self.kind.is_none_or(|k| k == p.kind)
            && self.database.as_deref().is_none_or(|d| d == p.database)
    }

    pub fn describe(&self) -> String {
        format!(
            "kind={} database={}",
            self.kind.map(Kind::as_str).unwrap_or("any"),
            self.database.as_deref().unwrap_or("any")
        )
    }
}

/// Lists `stage` under `prefix`, newest first (ties broken by key, so output is stable).
/// A manifest that cannot be read, or one whose object is gone, is an entry with a
/// [`Problem`], never an error: one bad entry must not hide every other.
pub async fn load(
    storage: &Arc<dyn Storage>,
    prefix: &str,
    stage: &str,
    zone: &Zone,
    filter: &Filter,
) -> Result<Vec<Entry>, CatalogError> {
    let objects = storage.list(&layout::stage_prefix(prefix, stage)).await?;
    let names: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let wanted = |key: &str| {
        layout::parse_key(prefix, key, zone).filter(|p| p.stage == stage && filter.matches(p))
    };
    let mut entries: Vec<(Entry, bool)> = Vec::new();
    for o in &objects {
        if let Some(parsed) = wanted(&o.key) {
            let has = names.contains(layout::manifest_key(&o.key).as_str());
            entries.push((entry(o.key.clone(), parsed, o.size, o.last_modified), has));
        } else if let Some(artifact) = o.key.strip_suffix(layout::MANIFEST_SUFFIX) {
            // A manifest without its object: the backup it describes is lost.
            if let (false, Some(parsed)) = (names.contains(artifact), wanted(artifact)) {
                let mut e = entry(artifact.to_string(), parsed, 0, o.last_modified);
                e.problem = Some(Problem::ObjectMissing);
                entries.push((e, true));
            }
        }
    }

    let limit = Arc::new(Semaphore::new(MANIFEST_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for (i, (e, has)) in entries.iter().enumerate() {
        if !*has {
            continue;
        }
        let (storage, limit, key) = (storage.clone(), limit.clone(), e.manifest_key());
        set.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore open");
            (i, fetch_manifest(&storage, &key).await)
        });
    }
    while let Some(r) = set.join_next().await {
        let (i, m) = r.expect("manifest fetch task panicked");
        let e = &mut entries[i].0;
        match m {
            Ok(m) => e.manifest = m,
            Err(err) if e.problem.is_none() => {
                e.problem = Some(Problem::ManifestUnreadable(unreadable(err)))
            }
            Err(_) => {}
        }
    }
    let mut out: Vec<Entry> = entries.into_iter().map(|(e, _)| e).collect();
    out.sort_by(|a, b| b.parsed.time.cmp(&a.parsed.time).then(a.key.cmp(&b.key)));
    Ok(out)
}

pub(crate) fn entry(
    key: String,
    parsed: ParsedKey,
    size: u64,
    last_modified: Option<DateTime<Utc>>,
) -> Entry {
    Entry {
        key,
        parsed,
        size,
        manifest: None,
        problem: None,
        last_modified,
        written_by_backhaul: false,
    }
}

/// Why a manifest could not be read, without repeating its key (the row names it).
pub(crate) fn unreadable(e: CatalogError) -> String {
    match e {
        CatalogError::BadManifest { source, .. } => {
            format!("not valid JSON for a manifest: {source}")
        }
        CatalogError::UnsupportedManifest { why, .. } => why,
        other => other.to_string(),
    }
}

/// Reads one manifest; a missing one is `None` (deleted between list and get).
pub async fn fetch_manifest(
    storage: &Arc<dyn Storage>,
    key: &str,
) -> Result<Option<Manifest>, CatalogError> {
    let m = match storage.get_bytes(key).await {
        Ok(b) => Manifest::from_slice(&b).map_err(|source| CatalogError::BadManifest {
            key: key.to_string(),
            source,
        })?,
        Err(StorageError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let directory_key = key
        .strip_suffix(layout::MANIFEST_SUFFIX)
        .and_then(layout::dir_folder)
        .is_some();
    shape_fits(&m, directory_key).map_err(|why| CatalogError::UnsupportedManifest {
        key: key.to_string(),
        why,
    })?;
    Ok(Some(m))
}

/// A manifest is read only when this version knows its format and its shape fits its key: a
/// reader that guessed could restore a directory dump's TOC as if it were the whole backup.
fn shape_fits(m: &Manifest, directory_key: bool) -> Result<(), String> {
    let want = if directory_key {
        manifest::FORMAT_DIRECTORY
    } else {
        manifest::FORMAT
    };
    if m.format > manifest::FORMAT_DIRECTORY {
        return Err(format!(
            "format {} was written by a newer backhaul: upgrade to read it",
            m.format
        ));
    }
    if m.format != want || m.directory.is_some() != directory_key {
        return Err(format!(
            "format {} with{} a file list does not fit a {} key",
            m.format,
            if m.directory.is_some() { "" } else { "out" },
            if directory_key {
                "directory dump's"
            } else {
                "single-file backup's"
            }
        ));
    }
    Ok(())
}

/// Finds `key`, or the newest entry matching the filter for `latest`.
pub fn pick<'a>(
    entries: &'a [Entry],
    key: &str,
    filter: &Filter,
) -> Result<&'a Entry, CatalogError> {
    if key == "latest" {
        entries
            .iter()
            // A run's cluster globals are not "its latest backup"; they are asked for by key
            // or with restore-globals.
            .find(|e| {
                filter.matches(&e.parsed)
                    && !e.parsed.globals
                    && e.problem != Some(Problem::ObjectMissing)
            })
            .ok_or_else(|| CatalogError::NotFound(format!("latest ({})", filter.describe())))
    } else {
        entries
            .iter()
            .find(|e| e.key == key && e.problem != Some(Problem::ObjectMissing))
            .ok_or_else(|| CatalogError::NotFound(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::file::FileStorage;
    use bytes::Bytes;

    #[tokio::test]
    async fn lists_newest_first_with_and_without_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path().to_path_buf()));
        let keys = [
            "prod/2024-01-01_00h00m00s_PGSQL/backup_prod_app_2024-01-01_00h00m00s.dump",
            "prod/2024-01-02_00h00m00s_PGSQL/backup_prod_app_2024-01-02_00h00m00s.dump.zst",
            "prod/2024-01-03_00h00m00s_MONGO/shop_2024-01-03_00h00m00s.zip",
            "prod/notes.txt",
            "dev/2024-01-04_00h00m00s_PGSQL/backup_dev_app_2024-01-04_00h00m00s.dump",
        ];
        for k in keys {
            storage
                .put_bytes(k, Bytes::from_static(b"x"), "application/octet-stream")
                .await
                .unwrap();
        }
        let zone = Zone::default();
        let all = load(&storage, "", "prod", &zone, &Filter::default())
            .await
            .unwrap();
        let got: Vec<&str> = all.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(got, vec![keys[2], keys[1], keys[0]]);
        assert!(all.iter().all(|e| e.manifest.is_none()));
        let pg = Filter {
            kind: Some(Kind::Postgres),
            database: Some("app".into()),
        };
        assert_eq!(pick(&all, "latest", &pg).unwrap().key, keys[1]);
        assert!(pick(
            &all,
            "latest",
            &Filter {
                kind: None,
                database: Some("nope".into())
            }
        )
        .is_err());
    }

    /// One unreadable manifest and one manifest without its object are entries with a
    /// problem; the others load as usual.
    #[tokio::test]
    async fn bad_and_orphan_manifests_are_entries_not_errors() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path().to_path_buf()));
        let good = "prod/2024-01-01_00h00m00s_PGSQL/backup_prod_app_2024-01-01_00h00m00s.dump";
        let bad = "prod/2024-01-02_00h00m00s_PGSQL/backup_prod_app_2024-01-02_00h00m00s.dump";
        let lost = "prod/2024-01-03_00h00m00s_PGSQL/backup_prod_app_2024-01-03_00h00m00s.dump";
        for (k, body) in [
            (good.to_string(), &b"x"[..]),
            (bad.to_string(), b"x"),
            (layout::manifest_key(bad), b"{not json,,"),
            (layout::manifest_key(lost), b"{not json either"),
        ] {
            storage
                .put_bytes(&k, Bytes::copy_from_slice(body), "application/octet-stream")
                .await
                .unwrap();
        }
        let all = load(&storage, "", "prod", &Zone::default(), &Filter::default())
            .await
            .unwrap();
        let got: Vec<(&str, Option<String>)> = all
            .iter()
            .map(|e| (e.key.as_str(), e.problem.as_ref().map(ToString::to_string)))
            .collect();
        assert_eq!(got[0], (lost, Some("object missing".into())));
        assert_eq!(got[1].0, bad);
        assert!(got[1]
            .1
            .as_deref()
            .unwrap()
            .starts_with("manifest unreadable: not valid JSON"));
        assert_eq!(got[2], (good, None));
        // `latest` never picks a lost backup; an unverifiable one is refused by `trust`.
        let latest = pick(&all, "latest", &Filter::default()).unwrap();
        assert_eq!(latest.key, bad);
        let refused = latest.trust(false).unwrap_err().to_string();
        assert!(refused.contains("--allow-unverified"), "{refused}");
        assert!(latest.trust(true).is_ok());
        // The old script's object (no manifest, no backhaul metadata) is trusted as before.
        assert!(all[2].trust(false).is_ok());
    }
}
