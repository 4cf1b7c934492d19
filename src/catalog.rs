//! What is in the store: artifact keys read back through [`layout::parse_key`], joined with
//! their manifests. `list`, `restore latest`, `verify` and `prune` all start here, so they
//! agree on what "the backups of a stage" are.
//!
//! Objects the old shell script wrote parse like ours but have no manifest; they are real
//! backups and are listed with `manifest: None` rather than skipped.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::Zone;
use crate::layout::{self, Kind, ParsedKey};
use crate::manifest::Manifest;
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
    #[error("no backup matches {0}")]
    NotFound(String),
    #[error("{0} is not a backup key in this layout ([prefix/]<stage>/<ts>_PGSQL|_MONGO/<file>)")]
    NotAnArtifact(String),
}

/// One artifact, newest first in listings.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub parsed: ParsedKey,
    pub size: u64,
    pub manifest: Option<Manifest>,
}

impl Entry {
    /// What the stored object must hash to, from its manifest (none for a seed-script object).
    pub fn expectation(&self) -> Option<crate::feed::Expect> {
        self.manifest.as_ref().map(|m| crate::feed::Expect {
            sha256: m.sha256.clone(),
            size: m.stored_bytes,
        })
    }
}

impl Entry {
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
pub async fn load(
    storage: &Arc<dyn Storage>,
    prefix: &str,
    stage: &str,
    zone: &Zone,
    filter: &Filter,
) -> Result<Vec<Entry>, CatalogError> {
    let objects = storage.list(&layout::stage_prefix(prefix, stage)).await?;
    let names: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let mut entries: Vec<(Entry, bool)> = objects
        .iter()
        .filter_map(|o| {
            let parsed = layout::parse_key(prefix, &o.key, zone)?;
            (parsed.stage == stage && filter.matches(&parsed)).then(|| {
                let has = names.contains(layout::manifest_key(&o.key).as_str());
                (
                    Entry {
                        key: o.key.clone(),
                        parsed,
                        size: o.size,
                        manifest: None,
                    },
                    has,
                )
            })
        })
        .collect();

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
        entries[i].0.manifest = m?;
    }
    let mut out: Vec<Entry> = entries.into_iter().map(|(e, _)| e).collect();
    out.sort_by(|a, b| b.parsed.time.cmp(&a.parsed.time).then(a.key.cmp(&b.key)));
    Ok(out)
}

/// Reads one manifest; a missing one is `None` (deleted between list and get).
pub async fn fetch_manifest(
    storage: &Arc<dyn Storage>,
    key: &str,
) -> Result<Option<Manifest>, CatalogError> {
    match storage.get_bytes(key).await {
        Ok(b) => Manifest::from_slice(&b)
            .map(Some)
            .map_err(|source| CatalogError::BadManifest {
                key: key.to_string(),
                source,
            }),
        Err(StorageError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
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
            .find(|e| filter.matches(&e.parsed) && !e.parsed.globals)
            .ok_or_else(|| CatalogError::NotFound(format!("latest ({})", filter.describe())))
    } else {
        entries
            .iter()
            .find(|e| e.key == key)
            .ok_or_else(|| CatalogError::NotFound(key.to_string()))
    }
}

/// Resolves `key|latest` to one entry. An explicit key is looked up directly (it may belong
/// to another stage than the one configured); `latest` lists the stage.
pub async fn resolve(
    storage: &Arc<dyn Storage>,
    prefix: &str,
    stage: &str,
    zone: &Zone,
    key: &str,
    filter: &Filter,
) -> Result<Entry, CatalogError> {
    if key == "latest" {
        let entries = load(storage, prefix, stage, zone, filter).await?;
        return pick(&entries, key, filter).cloned();
    }
    let parsed = layout::parse_key(prefix, key, zone)
        .ok_or_else(|| CatalogError::NotAnArtifact(key.to_string()))?;
    let info = storage
        .head(key)
        .await?
        .ok_or_else(|| CatalogError::NotFound(key.to_string()))?;
    let manifest = fetch_manifest(storage, &layout::manifest_key(key)).await?;
    Ok(Entry {
        key: key.to_string(),
        parsed,
        size: info.size,
        manifest,
    })
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
}
