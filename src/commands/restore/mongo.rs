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
//! counted first and a restore that reports fewer restored, or another count for any one
//! collection, fails. Users and roles (a backup of every database holds `admin.system.users`)
//! are not documents to mongorestore — it merges them through a temporary collection and
//! `_mergeAuthzCollections`, and only reads `admin.system.version` — so they are read back
//! from the target by name instead.
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

use crate::catalog::Entry;
use crate::cli::MongoRestoreArgs;
use crate::commands::Interrupted;
use crate::config::mongo::MongoConn;
use crate::config::ConfigError;
use crate::private_fs;
use crate::read_path::{Decode, Fed};
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
    #[error("mongorestore's per-collection counts differ from the backup: {0}")]
    Differs(String),
    #[error("after the restore, the target lacks {what} the backup holds: {missing}")]
    AuthMissing { what: &'static str, missing: String },
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
    /// Reads the target's users back after a restore that brought some; `None` when no
    /// mongodump is installed (then they are not read back, and the restore says so).
    pub mongodump: Option<PathBuf>,
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
        let mongodump = mongo::locate_mongodump_near(args.mongodump_path.as_deref(), &mongorestore);
        Ok(MongoTarget {
            mongodump,
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
    /// Users and roles, when the backup held any ([`mongo::is_auth_namespace`]).
    pub auth: Option<AuthCheck>,
}

/// What became of the backup's `admin.system.users|roles|version`: mongorestore merges users
/// and roles through `_mergeAuthzCollections` (outside its document counts) and only reads
/// `admin.system.version`, so they are checked by name instead of counted.
#[derive(Debug)]
pub struct AuthCheck {
    pub users: usize,
    pub roles: usize,
    /// `Err(why)` when the target could not be read back (mongorestore itself succeeded).
    pub read_back: Result<(), String>,
}

impl AuthCheck {
    /// The one line a restore and verify report.
    pub fn summary(&self) -> String {
        let held = format!(
            "{} user(s) and {} role(s) in the backup",
            self.users, self.roles
        );
        match &self.read_back {
            Ok(()) => format!("{held}, all present after the restore"),
            Err(why) => format!("{held}, merged by mongorestore; not read back: {why}"),
        }
    }
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
    // Whether an entry without a manifest may be restored is the caller's decision
    // ([`crate::catalog::Entry::trust`]).
    let expect = entry.expectation();
    let dir = mongo::private_dir(&target.work_dir, "mongo-restore")?;
    let object = dir.path().join(if is_zip {
        "dump.zip"
    } else {
        "dump.archive.gz"
    });
    let fed = crate::commands::common::download_to_file(
        storage, &entry.key, decode, expect, &object, cancel,
    )
    .await
    .map_err(|e| match e.downcast::<Interrupted>() {
        Ok(i) => i.into(),
        Err(e) => e.context("restore stopped before mongorestore ran; nothing was restored"),
    })?;
    let (object_path, tree) = (object.clone(), dir.path().join("dump"));
    let (source_dir, documents, auth_ids) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            if is_zip {
                extract_zip(&object_path, &tree)?;
                std::fs::remove_file(&object_path).ok();
                let root = dump_root(&tree)?;
                let counts = mongo::count_documents(&root)?;
                let ids = mongo::tree_auth_ids(&root)?;
                Ok((Some(root), counts, ids))
            } else {
                let file = std::fs::File::open(&object_path)?;
                let gz = flate2::read::MultiGzDecoder::new(io::BufReader::new(file));
                let mut ids: AuthIds = BTreeMap::new();
                let counts = mongo::archive_scan(gz, |ns, doc| {
                    if ns == mongo::AUTH_USERS || ns == mongo::AUTH_ROLES {
                        let set = ids.entry(ns.to_string()).or_default();
                        set.extend(mongo::doc_id(doc));
                    }
                })?;
                Ok((None, counts, ids))
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
    let expected: u64 = documents
        .iter()
        .filter(|(ns, _)| !mongo::is_auth_namespace(ns))
        .map(|(_, n)| n)
        .sum();
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
    let differ = count_differences(&documents, &restored, "backup");
    if !differ.is_empty() {
        return Err(MongoRestoreError::Differs(differ.join("; ")).into());
    }
    let auth = check_auth(target, &documents, &auth_ids, cancel).await?;
    match &auth {
        Some(a) if a.read_back.is_ok() => {
            tracing::info!(
                users = a.users,
                roles = a.roles,
                "users and roles: {}",
                a.summary()
            )
        }
        Some(a) => {
            tracing::warn!(
                users = a.users,
                roles = a.roles,
                "users and roles: {}",
                a.summary()
            )
        }
        None => {}
    }
    Ok(MongoRestored {
        fed,
        database,
        documents,
        restored_total,
        restored,
        auth,
    })
}

/// A manifest's counts under the names mongorestore reports. Zip-mode manifests written
/// before backhaul read the real names recorded mongodump's escaped file names
/// (`shop.odd+types`); such a name, when mongorestore reported no collection by it, is
/// unescaped (escaping is one-to-one, so this never merges two collections).
pub fn real_names(
    recorded: &BTreeMap<String, u64>,
    restored: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    recorded
        .iter()
        .map(|(ns, n)| {
            let unescaped = || {
                let (db, coll) = ns.split_once('.')?;
                let real = format!("{db}.{}", mongo::query_unescape(coll)?);
                restored.contains_key(&real).then_some(real)
            };
            let name = match restored.contains_key(ns) {
                true => ns.clone(),
                false => unescaped().unwrap_or_else(|| ns.clone()),
            };
            (name, *n)
        })
        .collect()
}

type AuthIds = BTreeMap<String, std::collections::BTreeSet<String>>;

/// `ns: restored, in the <source>` for every data collection whose count mongorestore reported
/// differently (a collection it did not report counts as 0 restored). Users, roles and
/// `admin.system.version` are not data to mongorestore ([`check_auth`]).
pub fn count_differences(
    expected: &BTreeMap<String, u64>,
    restored: &BTreeMap<String, u64>,
    source: &str,
) -> Vec<String> {
    expected
        .iter()
        .filter(|(ns, _)| !mongo::is_auth_namespace(ns))
        .filter_map(|(ns, n)| {
            let got = restored.get(ns).copied().unwrap_or(0);
            (got != *n).then(|| format!("{ns}: {got} restored, {n} in the {source}"))
        })
        .collect()
}

/// When the backup held users or roles (a whole-server or `admin` backup): reads them back
/// from the target, and fails when one the backup held is missing. A target that cannot be
/// read back (no mongodump, no privilege) is reported, not failed: mongorestore already
/// exited 0 after `_mergeAuthzCollections` succeeded.
async fn check_auth(
    target: &MongoTarget,
    documents: &BTreeMap<String, u64>,
    ids: &AuthIds,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<AuthCheck>> {
    if !documents.keys().any(|ns| mongo::is_auth_namespace(ns)) {
        return Ok(None);
    }
    let count = |ns: &str| ids.get(ns).map_or(0, |s| s.len());
    let mut check = AuthCheck {
        users: count(mongo::AUTH_USERS),
        roles: count(mongo::AUTH_ROLES),
        read_back: Ok(()),
    };
    for (ns, what) in [(mongo::AUTH_USERS, "users"), (mongo::AUTH_ROLES, "roles")] {
        let Some(want) = ids.get(ns).filter(|s| !s.is_empty()) else {
            continue;
        };
        let Some(mongodump) = &target.mongodump else {
            check.read_back = Err("no mongodump found to read them with".into());
            break;
        };
        let read = async {
            let tools = mongo::MongoTools::locate(Some(mongodump)).await?;
            mongo::read_ids(&tools, &target.conn, ns, target.redactor.clone()).await
        };
        let have = tokio::select! {
            r = read => r,
            _ = cancel.cancelled() => return Err(Interrupted.into()),
        };
        match have {
            Ok(have) => {
                let missing: Vec<&str> = want.difference(&have).map(String::as_str).collect();
                if !missing.is_empty() {
                    return Err(MongoRestoreError::AuthMissing {
                        what,
                        missing: missing.join(", "),
                    }
                    .into());
                }
            }
            Err(e) => check.read_back = Err(target.redactor.redact(&e.to_string())),
        }
    }
    Ok(Some(check))
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
    fn old_manifests_escaped_names_compare_with_the_real_ones() {
        let map = |v: &[(&str, u64)]| -> BTreeMap<String, u64> {
            v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
        };
        let restored = map(&[("shop.odd types", 50), ("shop.a+b", 2), ("shop.100%", 1)]);
        let old = map(&[
            ("shop.odd+types", 50),
            ("shop.a%2Bb", 2),
            ("shop.100%25", 1),
        ]);
        assert_eq!(real_names(&old, &restored), restored);
        assert!(count_differences(&real_names(&old, &restored), &restored, "manifest").is_empty());
        // Real names stay; a name matching nothing stays too, and is reported missing.
        assert_eq!(real_names(&restored, &restored), restored);
        let gone = map(&[("shop.odd+types", 50)]);
        assert_eq!(
            count_differences(
                &real_names(&gone, &BTreeMap::new()),
                &BTreeMap::new(),
                "manifest"
            ),
            ["shop.odd+types: 0 restored, 50 in the manifest"]
        );
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
