//! `backhaul restore` of a MongoDB artifact (and `verify --restore-into mongodb://…`).
//!
//! mongorestore is not transactional: it writes each collection as its data arrives, so a
//! damaged object streamed into it would leave the collections before the damage restored.
//! Both formats are therefore downloaded into a private 0700 temp dir and checked against the
//! manifest (SHA-256 + size) *before* mongorestore sees a byte; a mismatch restores nothing.
//! A zip is then extracted (entries that would escape the dir are refused) and restored with
//! `--dir` (a tree under one top folder, as the old script's `zip -r mongo_backup/`, is found);
//! an `.archive.gz` is handed over as `--archive=<file> --gzip`.
//!
//! mongorestore exits 0 after skipping what it does not understand (a folder it takes for
//! something else, `.bson.gz` files without `--gzip`), so the documents in the artifact are
//! counted first and a restore that reports fewer restored fails.
//!
//! Without `--clean` nothing is dropped and mongorestore runs with `--stopOnError`, so a
//! document that already exists in the target fails the restore; `--clean` maps to `--drop`
//! (each collection in the dump is replaced; others in the target are left alone).

use std::collections::BTreeMap;
use std::io::{self, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::Interrupted;
use crate::catalog::Entry;
use crate::cli::MongoRestoreArgs;
use crate::config::mongo::MongoConn;
use crate::config::ConfigError;
use crate::feed::{Decode, Fed};
use crate::private_fs;
use crate::secret::{Redactor, Secret};
use crate::source::mongo::{self, MongoRestoreOpts, RestoreSource};
use crate::storage::Storage;

#[derive(Debug, thiserror::Error)]
pub enum MongoRestoreError {
    #[error("zip entry {0:?} would be written outside the restore directory; refusing to extract")]
    UnsafeEntry(String),
    #[error("not a readable zip: {0}")]
    BadZip(String),
    #[error("{key} is neither a .zip nor an .archive.gz MongoDB artifact")]
    UnknownFormat { key: String },
    #[error("the backup holds the databases {databases}, but the target URI names the one database {target}: remove it from the URI's path (keep the login database as ?authSource={target})")]
    SeveralDatabases { databases: String, target: String },
    #[error("mongorestore restored {restored} of the {expected} documents in the backup{failed}")]
    Incomplete {
        restored: u64,
        expected: u64,
        failed: String,
    },
}

/// A MongoDB deployment to restore into: mongorestore, the connection and its secrets.
pub struct MongoTarget {
    pub mongorestore: PathBuf,
    pub conn: MongoConn,
    /// The database named in the URI's path, if any: restores go there instead of into the
    /// database the dump was taken from.
    pub uri_database: Option<String>,
    pub work_dir: PathBuf,
    pub redactor: Redactor,
}

impl MongoTarget {
    /// `var` names the flag/variable the URI came from, for configuration errors.
    pub fn resolve(uri: &str, var: &str, args: &MongoRestoreArgs) -> anyhow::Result<MongoTarget> {
        let secret = Secret::new(uri);
        // Any name validates the URI itself; the real database is chosen per artifact.
        let conn = MongoConn::resolve(&secret, Some("_"))
            .map_err(|e| ConfigError::invalid(var, e.message))?;
        let uri_database = conn.uri_database.clone();
        let mut redactor = Redactor::default();
        mongo::add_secrets(&conn, &mut redactor);
        let mongorestore = mongo::locate_mongorestore(
            args.mongorestore_path.as_deref(),
            args.mongodump_path.as_deref(),
        )
        .map_err(|e| ConfigError::invalid("MONGORESTORE_PATH", e.to_string()))?;
        let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        Ok(MongoTarget {
            mongorestore,
            conn,
            uri_database,
            work_dir,
            redactor,
        })
    }

    /// Where a dump of `source_db` goes: the URI's database, else the dump's own.
    pub fn database_for(&self, source_db: &str) -> String {
        self.uri_database
            .clone()
            .unwrap_or_else(|| source_db.to_string())
    }
}

/// What a MongoDB restore did.
#[derive(Debug)]
pub struct MongoRestored {
    pub fed: Fed,
    /// The database(s) restored into, comma separated.
    pub database: String,
    /// Documents per `db.collection`, counted in the artifact (names as dumped).
    pub documents: BTreeMap<String, u64>,
    /// mongorestore's own total (`N document(s) restored successfully`).
    pub restored_total: u64,
    /// Documents per collection as mongorestore reported them, under the dumped names.
    pub restored: BTreeMap<String, u64>,
}

/// Restores one MongoDB artifact into `target`. Objects without a manifest (the old script's)
/// are restored unchecked, as for PostgreSQL.
pub async fn restore_mongo(
    storage: &Arc<dyn Storage>,
    entry: &Entry,
    target: &MongoTarget,
    drop: bool,
    identities: Option<&Arc<crate::crypto::Identities>>,
    cancel: &CancellationToken,
) -> anyhow::Result<MongoRestored> {
    // Encrypted artifacts are decrypted on the way to the temp file; the format is what
    // lies under the `.age`.
    let decode = Decode::for_artifact(&entry.key, &entry.parsed.extension, identities)?;
    let ext = crate::crypto::inner_extension(&entry.parsed.extension);
    let is_zip = if ext.ends_with(".zip") {
        true
    } else if ext.ends_with(".archive.gz") {
        false
    } else {
        return Err(MongoRestoreError::UnknownFormat {
            key: entry.key.clone(),
        }
        .into());
    };
    mongo::checked_version(&target.mongorestore)
        .await
        .map_err(|e| match e {
            e @ mongo::MongoError::TooOld { .. } => {
                anyhow::Error::from(ConfigError::invalid("MONGORESTORE_PATH", e.to_string()))
            }
            e => e.into(),
        })?;
    let expect = entry.expectation();
    if expect.is_none() {
        tracing::warn!(key = %entry.key, "no manifest (written by the old script?): restoring without a checksum check");
    }
    let dir = mongo::private_dir(&target.work_dir, "mongo-restore")?;
    let object = dir.path().join(if is_zip {
        "dump.zip"
    } else {
        "dump.archive.gz"
    });
    let fed = super::common::download_to_file(storage, &entry.key, decode, expect, &object, cancel)
        .await
        .map_err(|e| match e.downcast::<Interrupted>() {
            Ok(i) => i.into(),
            Err(e) => e.context("restore stopped before mongorestore ran; nothing was restored"),
        })?;
    let (object_path, tree) = (object.clone(), dir.path().join("dump"));
    let (source_dir, documents) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        if is_zip {
            extract_zip(&object_path, &tree)?;
            std::fs::remove_file(&object_path).ok();
            let root = dump_root(&tree)?;
            let counts = mongo::count_documents(&root)?;
            Ok((Some(root), counts))
        } else {
            let file = std::fs::File::open(&object_path)?;
            let gz = flate2::read::MultiGzDecoder::new(io::BufReader::new(file));
            Ok((None, mongo::archive_counts(gz)?))
        }
    })
    .await
    .context("reading task panicked")?
    .context("reading the verified backup; nothing was restored")?;
    let databases: Vec<String> = documents
        .keys()
        .filter_map(|ns| ns.split_once('.').map(|(db, _)| db.to_string()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let rename_to = match (&target.uri_database, databases.as_slice()) {
        (Some(to), [_]) => Some(to.as_str()),
        (Some(to), [_, _, ..]) => {
            return Err(MongoRestoreError::SeveralDatabases {
                databases: databases.join(", "),
                target: to.clone(),
            }
            .into())
        }
        _ => None,
    };
    let database = rename_to
        .map(str::to_string)
        .unwrap_or_else(|| databases.join(","));
    for (ns, n) in &documents {
        tracing::info!(collection = %ns, documents = n, "in the backup");
    }
    let source = match &source_dir {
        Some(d) => RestoreSource::Dir(d),
        None => RestoreSource::ArchiveGz(&object),
    };
    let opts = MongoRestoreOpts {
        databases: &databases,
        rename_to,
        drop,
    };
    let report = tokio::select! {
        r = mongo::run_restore(&target.mongorestore, &target.conn, &source, &opts, target.redactor.clone()) => r?,
        // Dropping the future kills mongorestore's group and removes the config file.
        _ = cancel.cancelled() => return Err(Interrupted.into()),
    };
    drop_dir(dir);
    let expected: u64 = documents.values().sum();
    let restored_total = report.total.unwrap_or(0);
    let failed = report.failed.unwrap_or(0);
    if restored_total < expected || failed > 0 {
        return Err(MongoRestoreError::Incomplete {
            restored: restored_total,
            expected,
            failed: if failed > 0 {
                format!(" ({failed} failed)")
            } else {
                String::new()
            },
        }
        .into());
    }
    // The restored counts under the dumped names, so they compare with the manifest.
    let restored = report
        .collections
        .into_iter()
        .map(|(ns, n)| match (rename_to, databases.as_slice()) {
            (Some(to), [from]) => match ns.strip_prefix(&format!("{to}.")) {
                Some(coll) => (format!("{from}.{coll}"), n),
                None => (ns, n),
            },
            _ => (ns, n),
        })
        .collect();
    Ok(MongoRestored {
        fed,
        database,
        documents,
        restored_total,
        restored,
    })
}

/// The directory of a zip's tree that holds `<db>/<collection>.bson`: the tree itself for
/// backhaul's zips, or its one top folder for the old script's `zip -r … mongo_backup/`.
fn dump_root(tree: &Path) -> anyhow::Result<PathBuf> {
    let files: Vec<String> = mongo::walk(tree)?
        .into_iter()
        .map(|(rel, _)| rel)
        .filter(|rel| rel.ends_with(".bson") || rel.ends_with(".metadata.json"))
        .collect();
    let depth = |rel: &str| rel.split('/').count();
    let top = |rel: &str| rel.split('/').next().unwrap_or("").to_string();
    if let Some(first) = files.first() {
        let t = top(first);
        if files.iter().all(|f| depth(f) == 3 && top(f) == t) {
            return Ok(tree.join(t));
        }
    }
    Ok(tree.to_path_buf())
}

/// Explicit so a failure to remove the dump is at least logged (drop would swallow it).
fn drop_dir(dir: crate::private_fs::PrivateDir) {
    let path = dir.path().display().to_string();
    if let Err(e) = dir.close() {
        tracing::warn!(dir = %path, error = %e, "could not remove the restore temp dir");
    }
}

/// Extracts `zip` into `out`. Names come from the archive, i.e. from whoever wrote the object:
/// an absolute path or `..` would write outside `out`, so such entries fail the restore.
pub fn extract_zip(zip: &Path, out: &Path) -> Result<(), MongoRestoreError> {
    let bad = |e: &dyn std::fmt::Display| MongoRestoreError::BadZip(e.to_string());
    let file = std::fs::File::open(zip).map_err(|e| bad(&e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(&e))?;
    private_fs::create_dir_all(out).map_err(|e| bad(&e))?;
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).map_err(|e| bad(&e))?;
        let name = String::from_utf8_lossy(f.name_raw()).into_owned();
        // enclosed_name() would quietly make `/abs` relative; an absolute name in a dump we
        // wrote means the object is not ours, so it is refused outright.
        let absolute = name.starts_with(['/', '\\']);
        let rel = f
            .enclosed_name()
            .filter(|_| !absolute)
            .filter(|p| {
                p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            })
            .ok_or_else(|| MongoRestoreError::UnsafeEntry(name.clone()))?;
        let dest = out.join(rel);
        if f.is_dir() {
            private_fs::create_dir_all(&dest).map_err(|e| bad(&e))?;
            continue;
        }
        if let Some(parent) = dest.parent() {
            private_fs::create_dir_all(parent).map_err(|e| bad(&e))?;
        }
        // create_new: a second entry with the same name must not overwrite the first.
        let mut w = private_fs::create_file(&dest).map_err(|e| bad(&format!("{name}: {e}")))?;
        io::copy(&mut f, &mut w).map_err(|e| bad(&format!("{name}: {e}")))?;
    }
    Ok(())
}

/// Decodes a gzip file to the end: flate2 checks the trailer's CRC-32 and size, so an archive
/// damaged before it was uploaded (its manifest checksum then matches) is still caught.
/// Returns the decompressed size.
pub fn check_gzip(file: &mut std::fs::File) -> Result<u64, String> {
    file.rewind().map_err(|e| e.to_string())?;
    let mut dec = flate2::read::MultiGzDecoder::new(io::BufReader::new(file));
    io::copy(&mut dec, &mut io::sink()).map_err(|e| format!("not a valid gzip stream: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_with(names: &[&str]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut z = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        for n in names {
            z.start_file(*n, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(b"x").unwrap();
        }
        f.write_all(&z.finish().unwrap().into_inner()).unwrap();
        f
    }

    #[test]
    fn extraction_refuses_escaping_entries() {
        for evil in ["../evil.bson", "/abs/evil.bson", "shop/../../evil.bson"] {
            let dir = tempfile::tempdir().unwrap();
            let z = zip_with(&["shop/ok.bson", evil]);
            let out = dir.path().join("dump");
            let err = extract_zip(z.path(), &out).expect_err(evil);
            assert!(
                matches!(err, MongoRestoreError::UnsafeEntry(_)),
                "{evil}: {err}"
            );
            assert!(!dir.path().join("evil.bson").exists());
        }
        let dir = tempfile::tempdir().unwrap();
        extract_zip(zip_with(&["shop/a.bson"]).path(), dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("shop/a.bson")).unwrap(), b"x");
    }

    #[test]
    fn gzip_trailer_is_checked() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&[7u8; 10_000]).unwrap();
        let mut good = enc.finish().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&good).unwrap();
        assert_eq!(check_gzip(&mut f).unwrap(), 10_000);
        let n = good.len();
        good[n - 8] ^= 0xff; // CRC-32
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&good).unwrap();
        assert!(check_gzip(&mut f).is_err());
    }
}
