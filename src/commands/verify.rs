//! `backhaul verify`: proves artifacts are intact and, with `--restore-into`, restorable.
//!
//! Per artifact, one streaming pass checks the stored bytes against the manifest (SHA-256 and
//! size) and the structure (PostgreSQL: the decompressed archive fed to `pg_restore --list`;
//! MongoDB: every zip entry's CRC, or the whole `.archive.gz` decoded to its gzip trailer). The verdict
//! is written back into the manifest, so `list` shows it and `prune` never counts a failed
//! backup as a good one. Transient errors (a dropped connection) are reported but not
//! recorded: they say nothing about the artifact.
//!
//! Encrypted (`.age`) artifacts are decrypted with `--identity` before the structure check.
//! Without an identity only the stored bytes are checked (the manifest's SHA-256 covers the
//! ciphertext), which counts as a pass with `structure: "skipped (encrypted, no --identity)"`:
//! it proves the object is complete and intact, which is what a key-less verifier can know.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio_util::io::SyncIoBridge;
use tokio_util::sync::CancellationToken;

use super::common::{self, Store};
use super::{Reported, Runtime};
use crate::catalog::{self, Entry};
use crate::cli::VerifyArgs;
use crate::commands::common::filter;
use crate::commands::restore::contents::{self, Privileges};
use crate::commands::restore::dir;
use crate::commands::restore::mongo::{self, check_gzip, MongoTarget};
use crate::commands::restore::{self, is_mongo_url, PgTarget};
use crate::config::{non_empty, quoted, ConfigError};
use crate::crypto::{self, Identities};
use crate::layout::Kind;
use crate::manifest::Verification;
use crate::read_path::{self, Consumer, Decode, Expect, FeedError};
use crate::secret::Redactor;
use crate::source::child::ChildProc;
use crate::source::postgres::{self as pg, PgTools};
use crate::storage::Storage;

/// What verification needs, shared by `verify` and `backup --verify-into`.
pub struct Verifier {
    pub storage: Arc<dyn Storage>,
    /// `None` when no PostgreSQL client is installed (a MongoDB-only image).
    pub tools: Option<PgTools>,
    pub redactor: Redactor,
    /// `--identity`, for encrypted artifacts.
    pub identities: Option<Arc<Identities>>,
    pub restore_into: Option<PgTarget>,
    /// `--restore-into mongodb://…`: the scratch deployment MongoDB artifacts are restored into.
    pub mongo_restore_into: Option<MongoTarget>,
    /// `--no-owner` / `--no-acl` for the PostgreSQL restore.
    pub privileges: Privileges,
    pub cancel: CancellationToken,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub ok: bool,
    pub details: Value,
    pub error: Option<String>,
    /// False for errors that say nothing about the artifact (I/O, unsupported kinds).
    pub record: bool,
}

#[derive(Debug, Serialize)]
struct Line<'a> {
    event: &'static str,
    status: &'static str,
    key: &'a str,
    kind: &'static str,
    database: &'a str,
    details: &'a Value,
    /// Object Lock on the artifact (`GOVERNANCE until ...`), so an operator sees it is safe.
    #[serde(skip_serializing_if = "Option::is_none")]
    locked: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl Verifier {
    pub async fn verify(&self, entry: &Entry) -> Outcome {
        let mut details = Map::new();
        // A lost object or an unreadable manifest: nothing to check, and nothing to record
        // (an unreadable manifest is not ours to overwrite).
        if let Some(p) = &entry.problem {
            details.insert("problem".into(), json!(p.to_string()));
            return Outcome {
                ok: false,
                details: Value::Object(details),
                error: Some(p.to_string()),
                record: false,
            };
        }
        let sealed = crypto::is_encrypted(&entry.parsed.extension) && self.identities.is_none();
        let identity = same_object(&self.storage, entry, &mut details).await;
        let res = match identity {
            Err(e @ Failure::Transient(_)) => Err(e),
            identity => {
                let content = match entry.parsed.kind {
                    Kind::Postgres if entry.parsed.directory => {
                        self.verify_pg_dir(entry, sealed, &mut details).await
                    }
                    _ if sealed => self.verify_sealed(entry, &mut details).await,
                    Kind::Mongo => self.verify_mongo(entry, &mut details).await,
                    Kind::Postgres if entry.parsed.globals => {
                        self.verify_globals(entry, &mut details).await
                    }
                    Kind::Postgres => self.verify_pg(entry, &mut details).await,
                };
                // A content failure is the more specific verdict; an object that is intact
                // but not the manifest's still fails.
                content.and(identity)
            }
        };
        match res {
            Ok(()) => Outcome {
                ok: true,
                details: Value::Object(details),
                error: None,
                record: true,
            },
            Err(Failure::Artifact(msg) | Failure::Mismatch(msg)) => Outcome {
                ok: false,
                details: Value::Object(details),
                error: Some(msg),
                record: true,
            },
            Err(Failure::Transient(e)) => Outcome {
                ok: false,
                details: Value::Object(details),
                error: Some(self.redactor.redact(&format!("{e:#}"))),
                record: false,
            },
        }
    }

    /// `pg_restore --list`, to be fed an archive (or a directory dump's head) on its stdin.
    fn spawn_list(&self) -> Result<(ChildProc, std::fs::File), Failure> {
        let tools = self.tools.as_ref().ok_or_else(|| {
            Failure::Transient(anyhow::anyhow!(
                "no pg_restore found: install the PostgreSQL client or set PG_DUMP_PATH"
            ))
        })?;
        let mut child = pg::spawn_list(tools, self.redactor.clone())
            .map_err(|e| Failure::Transient(e.into()))?;
        let stdin = child
            .take_stdin_file()
            .ok_or_else(|| Failure::Transient(anyhow::anyhow!("pg_restore --list has no stdin")))?;
        Ok((child, stdin))
    }

    async fn verify_pg(
        &self,
        entry: &Entry,
        details: &mut Map<String, Value>,
    ) -> Result<(), Failure> {
        let expect = Some(require_manifest(entry, details)?);
        let (child, stdin) = self.spawn_list()?;
        let src = self.open(entry).await?;
        let decode = self.decode(entry)?;
        let restore_decode = decode.clone();
        let fed = tokio::task::spawn_blocking(move || {
            read_path::feed(src, &decode, stdin, expect.as_ref(), Consumer::MayStopEarly)
        })
        .await
        .map_err(|e| Failure::Transient(e.into()))?;
        let listed = child.wait().await;
        let fed = judge_feed(fed, details)?;
        details.insert("raw_bytes".into(), json!(fed.raw_bytes));
        if let Err(e) = listed {
            details.insert("structure".into(), json!("failed"));
            return Err(Failure::Artifact(format!(
                "not a readable pg_dump archive: {e}"
            )));
        }
        details.insert("structure".into(), json!("ok"));
        if self.mongo_restore_into.is_some() {
            details.insert(
                "restore".into(),
                json!("skipped: --restore-into is not a postgresql:// URL"),
            );
        }
        self.restore_pg_into(entry, restore_decode, details).await
    }

    /// With `--restore-into postgresql://…`: restores with `--clean` and compares what the
    /// database then holds with the manifest's record of the archive.
    async fn restore_pg_into(
        &self,
        entry: &Entry,
        restore_decode: Decode,
        details: &mut Map<String, Value>,
    ) -> Result<(), Failure> {
        if let Some(target) = &self.restore_into {
            details.insert("restored_into".into(), json!(target.database));
            let restored = match restore::restore_pg(
                &self.storage,
                entry,
                restore_decode,
                target,
                true,
                None,
                None,
                self.privileges,
                &self.cancel,
            )
            .await
            {
                Ok(r) => r,
                Err(e) if e.downcast_ref::<contents::MissingRoles>().is_some() => {
                    // A scratch cluster without the roles says nothing about the artifact.
                    details.insert("restore".into(), json!("skipped: missing roles"));
                    return Err(Failure::Transient(e));
                }
                Err(e) => {
                    details.insert("restore".into(), json!("failed"));
                    return Err(Failure::Artifact(self.redactor.redact(
                        &target.redactor.redact(&format!("restore failed: {e:#}")),
                    )));
                }
            };
            details.insert("restore".into(), json!("ok"));
            let counts = target.row_counts().await.map_err(Failure::Transient)?;
            details.insert("tables".into(), json!(counts));
            self.compare_contents(entry, &restored.entries, target, details)
                .await?;
        }
        Ok(())
    }

    /// Compares the restored database's objects, owners and ACL entries with the manifest's
    /// record of the archive (or, for manifests without one, with the archive's own TOC).
    async fn compare_contents(
        &self,
        entry: &Entry,
        archive: &[crate::source::pg_toc::Entry],
        target: &PgTarget,
        details: &mut Map<String, Value>,
    ) -> Result<(), Failure> {
        let expected = match entry.manifest.as_ref().and_then(|m| m.contents.clone()) {
            Some(c) => c,
            None => contents::contents(archive, &target.tools),
        };
        let live = contents::live_entries(target)
            .await
            .map_err(Failure::Transient)?;
        let got = contents::contents(&live, &target.tools);
        let diffs = crate::source::pg_toc::compare(
            &expected,
            &got,
            !self.privileges.no_owner,
            !self.privileges.no_acl,
        );
        details.insert("objects".into(), json!(got.objects.values().sum::<u64>()));
        details.insert("acl_entries".into(), json!(got.acl_entries));
        if diffs.is_empty() {
            details.insert("contents".into(), json!("ok"));
            return Ok(());
        }
        details.insert("contents".into(), json!("differs"));
        let msg = format!(
            "the restored database differs from the backup: {}",
            diffs.join("; ")
        );
        details.insert("differences".into(), json!(diffs));
        Err(Failure::Artifact(msg))
    }
}

impl Verifier {
    /// A globals artifact: checksum, then the script must be a complete pg_dumpall output
    /// (its closing comment is written last). It is never restored here: roles are
    /// cluster-wide, a scratch database is not the place to change them.
    async fn verify_globals(
        &self,
        entry: &Entry,
        details: &mut Map<String, Value>,
    ) -> Result<(), Failure> {
        let expect = Some(require_manifest(entry, details)?);
        let src = self.open(entry).await?;
        let decode = self.decode(entry)?;
        let fed = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            read_path::feed(src, &decode, &mut out, expect.as_ref(), Consumer::Strict).map(|_| out)
        })
        .await
        .map_err(|e| Failure::Transient(e.into()))?;
        let script = judge_feed(fed, details)?;
        let text = String::from_utf8_lossy(&script);
        let roles = crate::globals::role_names(&text);
        if !text.contains("PostgreSQL database cluster dump complete") {
            details.insert("structure".into(), json!("failed"));
            return Err(Failure::Artifact(
                "not a complete pg_dumpall --globals-only script".into(),
            ));
        }
        details.insert("structure".into(), json!("ok"));
        details.insert("roles".into(), json!(roles.len()));
        if self.restore_into.is_some() {
            details.insert(
                "restore".into(),
                json!("skipped: cluster globals (apply them with restore-globals)"),
            );
        }
        Ok(())
    }
}

/// The object under the key must be the one its manifest was written for (same ETag, and
/// version on a versioned bucket): a checksum match alone would also pass an identical dump
/// written over it by another writer. Manifests without an ETag (file backend, older
/// manifests) rely on the checksum alone. Recorded in `details.object`.
async fn same_object(
    storage: &Arc<dyn Storage>,
    entry: &Entry,
    details: &mut Map<String, Value>,
) -> Result<(), Failure> {
    let Some(m) = entry.manifest.as_ref().filter(|m| m.etag.is_some()) else {
        return Ok(());
    };
    let info = storage
        .head(&entry.key)
        .await
        .map_err(|e| Failure::Transient(e.into()))?
        .ok_or_else(|| Failure::Artifact(format!("{} does not exist", entry.key)))?;
    let version_ok = m.version_id.is_none() || info.version_id == m.version_id;
    if info.etag == m.etag && version_ok {
        details.insert("object".into(), json!("ok"));
        return Ok(());
    }
    details.insert("object".into(), json!("mismatch"));
    Err(Failure::Mismatch(format!(
        "the object is not the one its manifest describes: ETag {} version {}, manifest says ETag {} version {}",
        info.etag.as_deref().unwrap_or("none"),
        info.version_id.as_deref().unwrap_or("none"),
        m.etag.as_deref().unwrap_or("none"),
        m.version_id.as_deref().unwrap_or("none"),
    )))
}

/// What the manifest promises; an artifact without one cannot be verified. Records the
/// promised digest and size in `details` either way.
/// A feed's checksum (and, where it decodes, structure) verdict, recorded in `details`: a
/// mismatch or an undecodable stream is the artifact's fault, anything else transient.
fn judge_feed<T>(
    fed: Result<T, FeedError>,
    details: &mut Map<String, Value>,
) -> Result<T, Failure> {
    match fed {
        Err(e @ (FeedError::Checksum { .. } | FeedError::Size { .. })) => {
            details.insert("checksum".into(), json!("mismatch"));
            Err(Failure::Artifact(e.to_string()))
        }
        Err(e @ FeedError::Decode(_)) => {
            details.insert("checksum".into(), json!("ok"));
            details.insert("structure".into(), json!("failed"));
            Err(Failure::Artifact(e.to_string()))
        }
        Err(e) => Err(Failure::Transient(e.into())),
        Ok(v) => {
            details.insert("checksum".into(), json!("ok"));
            Ok(v)
        }
    }
}

fn require_manifest(entry: &Entry, details: &mut Map<String, Value>) -> Result<Expect, Failure> {
    let Some(expect) = entry.expectation() else {
        details.insert("checksum".into(), json!("unverifiable: no manifest"));
        return Err(Failure::Artifact("unverifiable: no manifest".into()));
    };
    details.insert("sha256".into(), json!(expect.sha256));
    details.insert("stored_bytes".into(), json!(expect.size));
    Ok(expect)
}

impl Verifier {
    /// The stored object as a blocking reader, for the feed on a blocking thread.
    async fn open(&self, entry: &Entry) -> Result<SyncIoBridge<crate::storage::Reader>, Failure> {
        let reader = self
            .storage
            .get(&entry.key)
            .await
            .map_err(|e| Failure::Transient(e.into()))?;
        Ok(SyncIoBridge::new(reader))
    }

    /// Checksum, then structure: a zip is read entry by entry (the zip crate checks each CRC),
    /// an `.archive.gz` is decompressed to the end (gzip CRC + size trailer). Zip needs random
    /// access, so the object goes to a private temp file first.
    async fn verify_mongo(
        &self,
        entry: &Entry,
        details: &mut Map<String, Value>,
    ) -> Result<(), Failure> {
        let expect = Some(require_manifest(entry, details)?);
        let src = self.open(entry).await?;
        let is_zip = crypto::inner_extension(&entry.parsed.extension).ends_with(".zip");
        let decode = self.decode(entry)?;
        let checked = tokio::task::spawn_blocking(move || -> Result<Structure, Failure> {
            let mut file = crate::private_fs::anonymous_file("verify")
                .map_err(|e| Failure::Transient(e.into()))?;
            match read_path::feed(src, &decode, &mut file, expect.as_ref(), Consumer::Strict) {
                Ok(_) => {}
                Err(e @ (FeedError::Checksum { .. } | FeedError::Size { .. })) => {
                    return Err(Failure::Mismatch(e.to_string()))
                }
                Err(e) => return Err(Failure::Transient(e.into())),
            }
            if is_zip {
                zip_entries(file)
                    .map(Structure::ZipEntries)
                    .map_err(Failure::Artifact)
            } else {
                check_gzip(&mut file)
                    .map(Structure::GzipBytes)
                    .map_err(Failure::Artifact)
            }
        })
        .await
        .map_err(|e| Failure::Transient(e.into()))?;
        match checked {
            Err(Failure::Mismatch(msg)) => {
                details.insert("checksum".into(), json!("mismatch"));
                Err(Failure::Artifact(msg))
            }
            Err(Failure::Artifact(msg)) => {
                details.insert("checksum".into(), json!("ok"));
                details.insert("structure".into(), json!("failed"));
                Err(Failure::Artifact(msg))
            }
            Err(e) => Err(e),
            Ok(s) => {
                details.insert("checksum".into(), json!("ok"));
                details.insert("structure".into(), json!("ok"));
                match s {
                    Structure::ZipEntries(n) => details.insert("zip_entries".into(), json!(n)),
                    Structure::GzipBytes(n) => details.insert("raw_bytes".into(), json!(n)),
                };
                self.restore_mongo_into(entry, details).await
            }
        }
    }

    /// With `--restore-into mongodb://…`: restores with `--drop` (a scratch deployment is
    /// overwritten, never merged into) and records the documents per collection.
    async fn restore_mongo_into(
        &self,
        entry: &Entry,
        details: &mut Map<String, Value>,
    ) -> Result<(), Failure> {
        let Some(target) = &self.mongo_restore_into else {
            if self.restore_into.is_some() {
                details.insert(
                    "restore".into(),
                    json!("skipped: --restore-into is not a mongodb:// URI"),
                );
            }
            return Ok(());
        };
        details.insert(
            "restored_into".into(),
            json!(target.database_for(&entry.parsed.database)),
        );
        match mongo::restore_mongo(
            &self.storage,
            entry,
            target,
            true,
            self.identities.as_ref(),
            &self.cancel,
        )
        .await
        {
            Ok(done) => {
                details.insert("restore".into(), json!("ok"));
                details.insert("collections".into(), json!(done.restored));
                details.insert("documents_restored".into(), json!(done.restored_total));
                details.insert(
                    "documents_in_backup".into(),
                    json!(done.documents.values().sum::<u64>()),
                );
                // The manifest's counts were taken at backup time: the restore must match them.
                // Users and roles are not counted by mongorestore: the restore checked them
                // by name, reported on their own line.
                if let Some(auth) = &done.auth {
                    details.insert("users_and_roles".into(), json!(auth.summary()));
                }
                let recorded = entry
                    .manifest
                    .as_ref()
                    .and_then(|m| m.source.collections.as_ref());
                if let Some(recorded) = recorded {
                    let recorded = mongo::real_names(recorded, &done.restored);
                    let differ = mongo::count_differences(&recorded, &done.restored, "manifest");
                    if !differ.is_empty() {
                        details.insert("restore".into(), json!("count mismatch"));
                        return Err(Failure::Artifact(format!(
                            "restored document counts differ from the manifest: {}",
                            differ.join("; ")
                        )));
                    }
                    details.insert("counts".into(), json!("match the manifest"));
                }
                Ok(())
            }
            Err(e) if e.downcast_ref::<super::Interrupted>().is_some() => {
                Err(Failure::Transient(e))
            }
            Err(e) => {
                details.insert("restore".into(), json!("failed"));
                Err(Failure::Artifact(
                    target.redactor.redact(&format!("restore failed: {e:#}")),
                ))
            }
        }
    }
}

/// What the structure check of a MongoDB artifact found.
enum Structure {
    ZipEntries(usize),
    /// Decompressed size of an `.archive.gz`.
    GzipBytes(u64),
}

impl Verifier {
    /// How to read `entry` back; only called when any needed identity is present.
    fn decode(&self, entry: &Entry) -> Result<Decode, Failure> {
        Decode::for_artifact(
            &entry.key,
            &entry.parsed.extension,
            self.identities.as_ref(),
        )
        .map_err(|e| Failure::Transient(e.into()))
    }

    /// An encrypted artifact and no `--identity`: the stored bytes are still checked against
    /// the manifest (its SHA-256 is of the ciphertext); what is inside cannot be.
    async fn verify_sealed(
        &self,
        entry: &Entry,
        details: &mut Map<String, Value>,
    ) -> Result<(), Failure> {
        let expect = Some(require_manifest(entry, details)?);
        let src = self.open(entry).await?;
        let fed = tokio::task::spawn_blocking(move || {
            read_path::feed(
                src,
                &Decode::identity(),
                std::io::sink(),
                expect.as_ref(),
                Consumer::Strict,
            )
        })
        .await
        .map_err(|e| Failure::Transient(e.into()))?;
        judge_feed(fed, details)?;
        self.sealed_rest_skipped(entry, details)
    }

    /// What an encrypted artifact without `--identity` cannot have checked: its structure is
    /// skipped, and a restore asked for is a failure (it cannot be decrypted), not a pass.
    fn sealed_rest_skipped(
        &self,
        entry: &Entry,
        details: &mut Map<String, Value>,
    ) -> Result<(), Failure> {
        details.insert(
            "structure".into(),
            json!("skipped (encrypted, no --identity)"),
        );
        if self.restore_into.is_some() {
            details.insert("restore".into(), json!("skipped"));
            return Err(Failure::Transient(
                crypto::missing_identity(&entry.key).into(),
            ));
        }
        Ok(())
    }
}

impl Verifier {
    /// A directory dump (`backup --jobs`): every object there and the one the manifest
    /// describes (ETag), every file's stored bytes against its own SHA-256 and size (decoded to
    /// the end when an identity allows, which also checks each zstd frame), the TOC readable
    /// and naming only files the manifest lists, and `pg_restore --list` of its transcoding.
    async fn verify_pg_dir(
        &self,
        entry: &Entry,
        sealed: bool,
        details: &mut Map<String, Value>,
    ) -> Result<(), Failure> {
        let toc_expect = require_manifest(entry, details)?;
        let Some(dir) = entry.manifest.as_ref().and_then(|m| m.directory.clone()) else {
            return Err(Failure::Artifact(
                "a directory dump's manifest without its file list".into(),
            ));
        };
        let keys = dir.objects.iter().map(|o| o.key.clone()).collect();
        let heads = dir::head_all(&self.storage, keys)
            .await
            .map_err(|e| Failure::Transient(e.into()))?;
        let mut replaced = None;
        for o in &dir.objects {
            match &heads[&o.key] {
                None => {
                    details.insert("stored_objects".into(), json!("missing"));
                    return Err(Failure::Artifact(format!("object missing: {}", o.key)));
                }
                Some(info)
                    if replaced.is_none()
                        && (o.etag.is_some() && info.etag != o.etag
                            || o.version_id.is_some() && info.version_id != o.version_id) =>
                {
                    replaced = Some(format!(
                        "{} is not the object its manifest describes: ETag {}, manifest says {}",
                        o.key,
                        info.etag.as_deref().unwrap_or("none"),
                        o.etag.as_deref().unwrap_or("none"),
                    ));
                }
                Some(_) => {}
            }
        }
        // Reported after the checksums, as for a single-file backup: a content failure is the
        // more specific verdict.
        let replaced = match replaced {
            Some(msg) => {
                details.insert("stored_objects".into(), json!("mismatch"));
                Err(Failure::Artifact(msg))
            }
            None => {
                details.insert("stored_objects".into(), json!(dir.objects.len() + 1));
                Ok(())
            }
        };
        let decode = if sealed {
            Decode::identity()
        } else {
            self.decode(entry)?
        };
        // toc.dat first, then every file; the TOC and the large-object lists are kept.
        let mut todo = vec![(
            crate::layout::DIR_ENTRY.to_string(),
            entry.key.clone(),
            toc_expect,
        )];
        todo.extend(dir.files.iter().map(|f| {
            let expect = Expect {
                sha256: f.sha256.clone(),
                size: f.stored_bytes,
            };
            (f.name.clone(), f.object.clone(), expect)
        }));
        if let Some(f) = dir.files.iter().find(|f| f.offset != 0) {
            return Err(Failure::Transient(anyhow::anyhow!(
                "{} is stored packed with other files: packed files need a newer backhaul",
                f.name
            )));
        }
        let restore_decode = decode.clone();
        let (storage, rt, files) = (
            self.storage.clone(),
            tokio::runtime::Handle::current(),
            todo.len(),
        );
        let checked = tokio::task::spawn_blocking(move || {
            let mut kept = HashMap::new();
            let plan = todo.iter().map(|(_, o, x)| (o.clone(), x.size)).collect();
            let mut fetch = dir::Fetcher::new(storage, rt.clone(), plan);
            for (name, object, expect) in todo {
                let keep = name == crate::layout::DIR_ENTRY
                    || (name.starts_with("blobs") && name.ends_with(".toc"));
                let reader = fetch
                    .open(&object)
                    .map_err(|e| Failure::Transient(e.into()))?;
                let src = SyncIoBridge::new_with_handle(reader, rt.clone());
                let mut out = Vec::new();
                let fed = if keep {
                    read_path::feed(src, &decode, &mut out, Some(&expect), Consumer::Strict)
                } else {
                    read_path::feed(
                        src,
                        &decode,
                        std::io::sink(),
                        Some(&expect),
                        Consumer::Strict,
                    )
                };
                match fed {
                    Ok(_) => {}
                    Err(e @ (FeedError::Checksum { .. } | FeedError::Size { .. })) => {
                        return Err(Failure::Mismatch(format!("{name} ({object}): {e}")))
                    }
                    Err(e @ FeedError::Decode(_)) => {
                        return Err(Failure::Artifact(format!("{name} ({object}): {e}")))
                    }
                    Err(e) => return Err(Failure::Transient(e.into())),
                }
                if keep {
                    kept.insert(name, out);
                }
            }
            Ok(kept)
        })
        .await
        .map_err(|e| Failure::Transient(e.into()))?;
        let kept = match checked {
            Err(Failure::Mismatch(msg)) => {
                details.insert("checksum".into(), json!("mismatch"));
                return Err(Failure::Artifact(msg));
            }
            Err(Failure::Artifact(msg)) => {
                details.insert("checksum".into(), json!("ok"));
                details.insert("structure".into(), json!("failed"));
                return Err(Failure::Artifact(msg));
            }
            Err(e) => return Err(e),
            Ok(kept) => kept,
        };
        details.insert("checksum".into(), json!("ok"));
        details.insert("files".into(), json!(files));
        replaced?;
        if sealed {
            return self.sealed_rest_skipped(entry, details);
        }
        if let Err(msg) = self.dir_structure(&dir, &kept).await? {
            details.insert("structure".into(), json!("failed"));
            return Err(Failure::Artifact(msg));
        }
        details.insert("structure".into(), json!("ok"));
        self.restore_pg_into(entry, restore_decode, details).await
    }

    /// The TOC reads, names only listed files (large-object lists too), and `pg_restore
    /// --list` reads its transcoding. `Ok(Err(why))` is the artifact's fault.
    async fn dir_structure(
        &self,
        dir: &crate::manifest::Directory,
        kept: &HashMap<String, Vec<u8>>,
    ) -> Result<Result<(), String>, Failure> {
        use crate::source::pg_archive;
        let listed: std::collections::HashSet<&str> =
            dir.files.iter().map(|f| f.name.as_str()).collect();
        let toc = match pg_archive::read_dir_toc(&kept[crate::layout::DIR_ENTRY]) {
            Ok(t) => t,
            Err(e) => return Ok(Err(format!("toc.dat: {e}"))),
        };
        for (id, name) in &toc.files {
            if !listed.contains(name.as_str()) {
                return Ok(Err(format!(
                    "the manifest does not list {name}, the file of TOC entry {id}"
                )));
            }
            if let Some(list) = kept.get(name) {
                let los = match pg_archive::read_blobs_toc(list) {
                    Ok(l) => l,
                    Err(e) => return Ok(Err(format!("{name}: {e}"))),
                };
                if let Some((_, lo)) = los.iter().find(|(_, lo)| !listed.contains(lo.as_str())) {
                    return Ok(Err(format!(
                        "the manifest does not list {lo}, named in {name}"
                    )));
                }
            }
        }
        let (child, mut stdin) = self.spawn_list()?;
        let head = toc.custom_head;
        let writing = tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(&head);
        });
        let listed = child.wait().await;
        let _ = writing.await;
        Ok(listed
            .map(|_| ())
            .map_err(|e| format!("pg_restore --list of its table of contents: {e}")))
    }
}

/// Reads every entry of a zip to the end, which makes the zip crate check its CRC-32.
fn zip_entries(mut file: std::fs::File) -> Result<usize, String> {
    use std::io::Seek as _;
    file.rewind().map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("not a readable zip: {e}"))?;
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| format!("zip entry {i}: {e}"))?;
        let name = f
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| i.to_string());
        std::io::copy(&mut f, &mut std::io::sink())
            .map_err(|e| format!("zip entry {name}: {e}"))?;
    }
    Ok(zip.len())
}

enum Failure {
    /// The artifact is bad: recorded in its manifest.
    Artifact(String),
    /// The stored bytes differ from the manifest (a kind of `Artifact` failure).
    Mismatch(String),
    /// We could not tell: reported, not recorded.
    Transient(anyhow::Error),
}

/// Writes the verdict into the artifact's manifest (none to write for legacy objects).
pub async fn record(storage: &Arc<dyn Storage>, entry: &Entry, o: &Outcome) -> anyhow::Result<()> {
    let Some(mut m) = entry.manifest.clone() else {
        return Ok(());
    };
    let mut details = o.details.clone();
    if let (Some(err), Value::Object(map)) = (&o.error, &mut details) {
        map.insert("error".into(), json!(err));
    }
    m.verification = Some(Verification {
        verified_at: Utc::now(),
        ok: o.ok,
        details,
    });
    let key = entry.manifest_key();
    // On an Object Lock bucket the new current version carries the old one's retention and
    // legal hold: recording a verdict must never leave the manifest unlocked.
    let lock = storage.lock(&key).await.with_context(|| {
        format!(
            "reading the Object Lock of {key} before recording the verification (nothing recorded)"
        )
    })?;
    match lock {
        Some(lock) => {
            storage
                .put_bytes_locked(&key, m.to_bytes(), "application/json", &lock)
                .await
        }
        None => {
            storage
                .put_bytes(&key, m.to_bytes(), "application/json")
                .await
        }
    }
    .with_context(|| format!("recording the verification in {key}"))
}

/// Verifies, records and prints one summary line; returns whether it passed.
pub async fn check_and_report(v: &Verifier, entry: &Entry) -> anyhow::Result<bool> {
    let o = v.verify(entry).await;
    if o.record {
        record(&v.storage, entry, &o).await?;
    }
    let line = Line {
        event: "verify",
        status: if o.ok { "ok" } else { "failed" },
        key: &entry.key,
        kind: entry.parsed.kind.as_str(),
        database: &entry.parsed.database,
        details: &o.details,
        locked: v
            .storage
            .lock(&entry.key)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.describe(Utc::now())),
        error: o.error.as_deref(),
    };
    if o.ok {
        tracing::info!(key = %entry.key, "verified");
    } else {
        tracing::error!(key = %entry.key, error = o.error.as_deref().unwrap_or(""), "verification failed");
    }
    if crate::output::human() {
        println!(
            "{}",
            crate::output::verify_line(line.key, line.kind, line.database, o.ok, line.error)
        );
    } else {
        println!("{}", serde_json::to_string(&line)?);
    }
    Ok(o.ok)
}

pub async fn run(args: VerifyArgs, rt: Runtime) -> anyhow::Result<()> {
    let key = non_empty(args.key.clone());
    // What to verify comes first: a bare `verify` is told that, not about a missing bucket.
    match (&key, non_empty(args.since.clone())) {
        (None, None) => return Err(ConfigError::invalid(
            "verify",
            "needs the backups to check: an id from `backhaul list`, a key, `latest`, or --since <duration> (e.g. `backhaul verify latest --stage prod`)",
        )
        .into()),
        (Some(k), Some(_)) => return Err(ConfigError::invalid(
            "verify",
            format!("takes one backup ({}) or --since <duration>, not both", quoted(k)),
        )
        .into()),
        _ => {}
    }
    let store = Store::resolve_for_key(&args.store, args.key.as_deref().unwrap_or("latest"))?;
    let filter = filter(args.kind.as_deref(), args.database.clone())?;
    let since = non_empty(args.since.clone())
        .map(|s| common::parse_duration(&s, "--since"))
        .transpose()?;
    // An explicit PG_DUMP_PATH must be right (exit 2); otherwise a missing client only
    // matters once a PostgreSQL artifact comes up.
    let tools = match &args.pg.pg_dump_path {
        Some(p) => Some(restore::locate_tools(Some(p)).await?),
        None => restore::locate_tools(None).await.ok(),
    };
    let identities = restore::load_identities(args.identity.as_deref())?;
    if let Some(url) = non_empty(args.restore_into.clone()) {
        restore::check_target_scheme(&url, "VERIFY_RESTORE_INTO")?;
    }
    let (restore_into, mongo_restore_into) = match non_empty(args.restore_into.clone()) {
        Some(url) if is_mongo_url(&url) => (
            None,
            Some(MongoTarget::resolve(
                &url,
                "VERIFY_RESTORE_INTO",
                &args.mongo,
            )?),
        ),
        Some(url) => (
            Some(
                PgTarget::resolve(&url, "VERIFY_RESTORE_INTO", args.pg.pg_dump_path.as_deref())
                    .await?,
            ),
            None,
        ),
        None => (None, None),
    };
    let storage = store.open_existing().await?;
    let prefix = store.dest.key_prefix();
    let entries = match (key, since) {
        (Some(k), _) => {
            vec![store.find(&storage, &k, &filter).await?]
        }
        (None, Some(d)) => {
            let cutoff =
                Utc::now() - chrono::Duration::from_std(d).context("--since is too large")?;
            catalog::load(&storage, &prefix, &store.stage, &store.zone, &filter)
                .await?
                .into_iter()
                .filter(|e| e.parsed.time >= cutoff)
                .collect()
        }
        (None, None) => unreachable!("checked above"),
    };
    if entries.is_empty() {
        return Err(Reported(format!(
            "no backups to verify in the last {} ({})",
            args.since.unwrap_or_default(),
            filter.describe()
        ))
        .into());
    }
    let redactor = restore_into
        .as_ref()
        .map(|t| t.redactor.clone())
        .or_else(|| mongo_restore_into.as_ref().map(|t| t.redactor.clone()))
        .unwrap_or_default();
    let v = Verifier {
        storage,
        tools,
        redactor,
        identities,
        restore_into,
        mongo_restore_into,
        privileges: Privileges {
            no_owner: args.privileges.no_owner,
            no_acl: args.privileges.no_acl,
        },
        cancel: rt.cancel.clone(),
    };
    let mut failed = 0;
    for e in &entries {
        if !check_and_report(&v, e).await? {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(Reported(format!(
            "{failed} of {} artifacts failed verification",
            entries.len()
        ))
        .into());
    }
    Ok(())
}
