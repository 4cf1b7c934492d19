//! `backhaul restore` of a MongoDB artifact (and `verify --restore-into mongodb://…`).
//!
//! mongorestore is not transactional: it writes each collection as its data arrives, so a
//! damaged object streamed into it would leave the collections before the damage restored.
//! Both formats are therefore downloaded into a private 0700 temp dir and checked against the
//! manifest (SHA-256 + size) *before* mongorestore sees a byte; a mismatch restores nothing.
//! A zip is then extracted (entries that would escape the dir are refused) and restored with
//! `--dir`; an `.archive.gz` is handed over as `--archive=<file> --gzip`.
//!
//! Without `--clean` nothing is dropped and mongorestore runs with `--stopOnError`, so a
//! document that already exists in the target fails the restore; `--clean` maps to `--drop`
//! (each collection in the dump is replaced; others in the target are left alone).

use std::collections::BTreeMap;
use std::io::{self, Read, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::io::SyncIoBridge;
use tokio_util::sync::CancellationToken;

use super::restore::expectation;
use super::Interrupted;
use crate::catalog::Entry;
use crate::cli::MongoArgs;
use crate::config::mongo::MongoConn;
use crate::config::ConfigError;
use crate::feed::{self, Consumer, Decode, Fed};
use crate::secret::{Redactor, Secret};
use crate::source::mongo::{self, MongoRestoreOpts, RestoreSource};
use crate::storage::Storage;

#[derive(Debug, thiserror::Error)]
pub enum MongoRestoreError {
    #[error("zip entry {0:?} would be written outside the restore directory; refusing to extract")]
    UnsafeEntry(String),
    #[error("not a readable zip: {0}")]
    BadZip(String),
    #[error("{file}: truncated BSON (a document's length runs past the end of the file)")]
    TruncatedBson { file: String },
    #[error("{key} is neither a .zip nor an .archive.gz MongoDB artifact")]
    UnknownFormat { key: String },
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
    pub fn resolve(uri: &str, var: &str, args: &MongoArgs) -> anyhow::Result<MongoTarget> {
        let secret = Secret::new(uri);
        // Any name validates the URI itself; the real database is chosen per artifact.
        let conn = MongoConn::resolve(&secret, Some("_"))
            .map_err(|e| ConfigError::invalid(var, e.message))?;
        let uri_database = MongoConn::resolve(&secret, None)
            .ok()
            .and_then(|c| c.databases.into_iter().next());
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
    pub database: String,
    /// Documents per collection, counted from the dump's BSON (zip artifacts).
    pub documents: Option<BTreeMap<String, u64>>,
    /// mongorestore's own total (`N document(s) restored successfully`), when it printed one.
    pub restored_total: Option<u64>,
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
    let expect = expectation(entry);
    if expect.is_none() {
        tracing::warn!(key = %entry.key, "no manifest (written by the old script?): restoring without a checksum check");
    }
    let dir = mongo::private_dir(&target.work_dir, "backhaul-mongo-restore-")?;
    let object = dir.path().join(if is_zip {
        "dump.zip"
    } else {
        "dump.archive.gz"
    });
    let reader = storage.get(&entry.key).await?;
    let src = SyncIoBridge::new(reader);
    let file_path = object.clone();
    let download = tokio::task::spawn_blocking(move || -> anyhow::Result<Fed> {
        let file = std::fs::File::create(&file_path)
            .with_context(|| format!("creating {}", file_path.display()))?;
        let mut w = io::BufWriter::new(file);
        Ok(feed::feed(
            src,
            &decode,
            &mut w,
            expect.as_ref(),
            Consumer::Strict,
        )?)
    });
    let fed = tokio::select! {
        j = download => j.context("download task panicked")?
            .context("restore stopped before mongorestore ran; nothing was restored")?,
        _ = cancel.cancelled() => return Err(Interrupted.into()),
    };
    let database = target.database_for(&entry.parsed.database);
    let (source_dir, documents) = if is_zip {
        let tree = dir.path().join("dump");
        let (zip, out) = (object.clone(), tree.clone());
        let counts = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            extract_zip(&zip, &out)?;
            std::fs::remove_file(&zip).ok();
            count_documents(&out)
        })
        .await
        .context("extract task panicked")?
        .context("extracting the verified zip; nothing was restored")?;
        (Some(tree), Some(counts))
    } else {
        (None, None)
    };
    let source = match &source_dir {
        Some(d) => RestoreSource::Dir(d),
        None => RestoreSource::ArchiveGz(&object),
    };
    let opts = MongoRestoreOpts {
        from: &entry.parsed.database,
        to: &database,
        drop,
    };
    let tail = tokio::select! {
        r = mongo::run_restore(&target.mongorestore, &target.conn, &source, &opts, target.redactor.clone()) => r?,
        // Dropping the future kills mongorestore's group and removes the config file.
        _ = cancel.cancelled() => return Err(Interrupted.into()),
    };
    drop_dir(dir);
    Ok(MongoRestored {
        fed,
        database,
        documents,
        restored_total: restored_total(&tail),
    })
}

/// The total from mongorestore's last line, `N document(s) restored successfully. …`.
fn restored_total(tail: &[String]) -> Option<u64> {
    tail.iter().rev().find_map(|l| {
        let (head, _) = l.split_once(" document(s) restored successfully")?;
        head.rsplit(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// Explicit so a failure to remove the dump is at least logged (drop would swallow it).
fn drop_dir(dir: tempfile::TempDir) {
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
    std::fs::create_dir_all(out).map_err(|e| bad(&e))?;
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
            std::fs::create_dir_all(&dest).map_err(|e| bad(&e))?;
            continue;
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| bad(&e))?;
        }
        // create_new: a second entry with the same name must not overwrite the first.
        let mut w = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&dest)
            .map_err(|e| bad(&format!("{name}: {e}")))?;
        io::copy(&mut f, &mut w).map_err(|e| bad(&format!("{name}: {e}")))?;
    }
    Ok(())
}

/// Documents per `db.collection` in a dump tree, from each `.bson` file's length prefixes:
/// exact, and needs no BSON decoder.
pub fn count_documents(root: &Path) -> Result<BTreeMap<String, u64>, anyhow::Error> {
    let mut out = BTreeMap::new();
    for (rel, path) in mongo::walk(root)? {
        let Some(stem) = rel.strip_suffix(".bson") else {
            continue;
        };
        let ns = stem.replacen('/', ".", 1);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {rel}"))?;
        out.insert(ns, count_bson(file, &rel)?);
    }
    Ok(out)
}

/// Counts concatenated BSON documents: each starts with its total length as a little-endian
/// int32 (at least 5: the length itself plus the terminating NUL).
fn count_bson(file: std::fs::File, name: &str) -> Result<u64, anyhow::Error> {
    let len = file.metadata()?.len();
    let mut r = io::BufReader::new(file);
    let (mut pos, mut n) = (0u64, 0u64);
    while pos < len {
        let mut prefix = [0u8; 4];
        r.read_exact(&mut prefix).map_err(|_| truncated(name))?;
        let size = i32::from_le_bytes(prefix);
        if size < 5 || pos + size as u64 > len {
            return Err(truncated(name).into());
        }
        r.seek_relative(i64::from(size) - 4)?;
        pos += size as u64;
        n += 1;
    }
    Ok(n)
}

fn truncated(name: &str) -> MongoRestoreError {
    MongoRestoreError::TruncatedBson {
        file: name.to_string(),
    }
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
    fn bson_documents_are_counted_by_length_prefix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("shop")).unwrap();
        let doc = [5u8, 0, 0, 0, 0];
        let mut two = doc.to_vec();
        two.extend_from_slice(&[6, 0, 0, 0, 0, 0]);
        std::fs::write(dir.path().join("shop/a.bson"), &two).unwrap();
        std::fs::write(dir.path().join("shop/empty.bson"), b"").unwrap();
        std::fs::write(dir.path().join("shop/a.metadata.json"), b"{}").unwrap();
        let counts = count_documents(dir.path()).unwrap();
        assert_eq!(counts["shop.a"], 2);
        assert_eq!(counts["shop.empty"], 0);
        assert_eq!(counts.len(), 2);
        std::fs::write(dir.path().join("shop/a.bson"), &two[..8]).unwrap();
        assert!(count_documents(dir.path()).is_err());
    }

    #[test]
    fn mongorestore_total_is_parsed() {
        let tail = vec![
            "2024-01-01T00:00:00.000+0000\tfinished restoring shop.a (2 documents, 0 failures)"
                .to_string(),
            "2024-01-01T00:00:00.000+0000\t1063 document(s) restored successfully. 0 document(s) failed to restore.".to_string(),
        ];
        assert_eq!(restored_total(&tail), Some(1063));
        assert_eq!(restored_total(&tail[..1]), None);
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
