//! Restore of a directory-format dump (`backup --jobs N`): its `toc.dat` object and one object
//! per data file, each file its own compressed (and encrypted) stream with its own SHA-256 in
//! the manifest.
//!
//! pg_restore reads a directory archive by file name and ends a table's COPY at the end of its
//! file, so a file fed through a pipe that closes early (backhaul killed) would commit a
//! truncated table. Instead the dump is transcoded into a custom-format archive on pg_restore's
//! stdin ([`crate::source::pg_archive::read_dir_toc`], [`BlockWriter`]): the TOC as a custom
//! head, then each file as a length-framed data block. A block's last bytes and its terminator
//! are held back until the file's stored bytes matched the manifest, so no table ends, let
//! alone commits, on unverified bytes; a damaged file stops the restore with pg_restore's input
//! still open (killed mid-COPY: rolled back).
//!
//! Without `--jobs` the whole archive goes to one `pg_restore --single-transaction`: nothing
//! commits unless every file verified. With `--jobs N` ([`crate::commands::restore::dir::jobs`]) each data
//! pg_restore is its own transaction, committing only tables whose files all verified.

pub mod jobs;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::io::SyncIoBridge;
use tokio_util::sync::CancellationToken;

use crate::catalog::Entry;
use crate::commands::restore::contents::{self, Privileges};
use crate::commands::restore::{PgTarget, Restored};
use crate::commands::Interrupted;
use crate::manifest::{Directory, DumpFile};
use crate::read_path::{self, Consumer, Decode, Expect, Fed, FeedError};
use crate::source::pg_archive::{self, BlockWriter, DirToc};
use crate::source::postgres::{self as pg, RestoreOpts};
use crate::storage::{ObjectInfo, Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{0} is a directory dump (backup --jobs) without a readable manifest: only the manifest lists its files and their checksums, so it is never restored without one")]
    NoManifest(String),
    #[error("{key}: its manifest does not list {name}, a file the dump's table of contents needs: the backup is incomplete. Nothing was changed")]
    Unlisted { key: String, name: String },
    #[error("{name} is stored at offset {offset} of {object} (packed with other files): packed files need a newer backhaul")]
    Packed {
        name: String,
        object: String,
        offset: u64,
    },
    #[error("object missing: {object} (file {name} of {key}). Nothing was changed")]
    ObjectMissing {
        key: String,
        name: String,
        object: String,
    },
    #[error("{key}: reading its table of contents: {source}")]
    Toc {
        key: String,
        source: pg_archive::ArchiveError,
    },
    #[error("{name} of {key}: {source}")]
    BlobsToc {
        key: String,
        name: String,
        source: pg_archive::ArchiveError,
    },
}

/// A directory dump ready to be fed: its TOC read and checked against the manifest, every
/// file it needs listed and its object present.
pub struct DirBackup {
    pub key: String,
    pub dir: DirToc,
    pub directory: Directory,
    /// By file name.
    pub files: HashMap<String, DumpFile>,
    /// Each BLOBS entry's large objects: OID and file, as its list names them.
    pub blobs: HashMap<i32, Vec<(u32, String)>>,
    pub decode: Decode,
    /// What the toc object hashed to.
    pub toc_fed: Fed,
}

/// Fetches and verifies the TOC object (small), reads it, checks that the manifest lists every
/// file the TOC (and each large-object list) names, stored where this version can read it,
/// and that every object is there. Nothing touches a target before this passed.
pub async fn open(
    storage: &Arc<dyn Storage>,
    entry: &Entry,
    decode: Decode,
) -> anyhow::Result<DirBackup> {
    let key = entry.key.clone();
    let (manifest, directory) = match &entry.manifest {
        Some(m) => match &m.directory {
            Some(d) => (m, d.clone()),
            None => return Err(DirError::NoManifest(key).into()),
        },
        None => return Err(DirError::NoManifest(key).into()),
    };
    let expect = Expect {
        sha256: manifest.sha256.clone(),
        size: manifest.stored_bytes,
    };
    let (toc_dat, toc_fed) = fetch_whole(storage, &key, &decode, expect)
        .await
        .with_context(|| format!("{} ({key})", layout_name(&key)))?;
    let dir = pg_archive::read_dir_toc(&toc_dat).map_err(|source| DirError::Toc {
        key: key.clone(),
        source,
    })?;
    let files: HashMap<String, DumpFile> = directory
        .files
        .iter()
        .map(|f| (f.name.clone(), f.clone()))
        .collect();
    let listed = |name: &str| -> Result<&DumpFile, DirError> {
        let f = files.get(name).ok_or_else(|| DirError::Unlisted {
            key: key.clone(),
            name: name.to_string(),
        })?;
        if f.offset != 0 {
            return Err(DirError::Packed {
                name: name.to_string(),
                object: f.object.clone(),
                offset: f.offset,
            });
        }
        Ok(f)
    };
    let mut needed: Vec<&DumpFile> = Vec::new();
    let mut blobs = HashMap::new();
    for e in dir.toc.entries.iter().filter(|e| e.has_block()) {
        let name = &dir.files[&e.dump_id];
        let f = listed(name)?;
        if e.desc == "BLOBS" {
            let (list, _) = fetch_whole(storage, &f.object, &decode, expect_of(f))
                .await
                .with_context(|| format!("{name} ({})", f.object))?;
            let list = pg_archive::read_blobs_toc(&list).map_err(|source| DirError::BlobsToc {
                key: key.clone(),
                name: name.clone(),
                source,
            })?;
            for (_, lo) in &list {
                needed.push(listed(lo)?);
            }
            blobs.insert(e.dump_id, list);
        } else {
            needed.push(f);
        }
    }
    check_present(storage, &key, &needed).await?;
    Ok(DirBackup {
        key,
        dir,
        directory,
        files,
        blobs,
        decode,
        toc_fed,
    })
}

fn expect_of(f: &DumpFile) -> Expect {
    Expect {
        sha256: f.sha256.clone(),
        size: f.stored_bytes,
    }
}

/// The last component of a key, for messages ("toc.dat.zst").
fn layout_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// A small object (a TOC, a large-object list) read whole, verified, decoded.
async fn fetch_whole(
    storage: &Arc<dyn Storage>,
    key: &str,
    decode: &Decode,
    expect: Expect,
) -> anyhow::Result<(Vec<u8>, Fed)> {
    if expect.size > pg_archive::MAX_HEAD as u64 {
        return Err(pg_archive::ArchiveError::TooLarge.into());
    }
    let stored = storage.get_bytes(key).await?;
    let decode = decode.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let fed = read_path::feed(
            &stored[..],
            &decode,
            &mut out,
            Some(&expect),
            Consumer::Strict,
        )?;
        anyhow::Ok((out, fed))
    })
    .await
    .context("decoding task panicked")?
}

/// Every object must be there: a lost file is named before anything runs. One listing of the
/// dump's folder (a page per thousand objects, where a HEAD each would take a round trip per
/// large object); HEADs for any object the manifest puts elsewhere.
async fn check_present(
    storage: &Arc<dyn Storage>,
    key: &str,
    files: &[&DumpFile],
) -> anyhow::Result<()> {
    let folder = crate::layout::dir_folder(key).unwrap_or(key);
    let mut present: std::collections::HashSet<String> = storage
        .list(folder)
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let elsewhere = files
        .iter()
        .filter(|f| !f.object.starts_with(folder))
        .map(|f| f.object.clone())
        .collect();
    for (k, found) in head_all(storage, elsewhere).await? {
        if found.is_some() {
            present.insert(k);
        }
    }
    // The first in file order, so the same loss always reads the same.
    let missing = files
        .iter()
        .filter(|f| !present.contains(&f.object))
        .min_by(|a, b| name_order(&a.name).cmp(&name_order(&b.name)));
    match missing {
        Some(f) => Err(DirError::ObjectMissing {
            key: key.to_string(),
            name: f.name.clone(),
            object: f.object.clone(),
        }
        .into()),
        None => Ok(()),
    }
}

/// HEAD of each key, 16 at a time: `None` for an object that is not there.
pub async fn head_all(
    storage: &Arc<dyn Storage>,
    keys: Vec<String>,
) -> Result<HashMap<String, Option<ObjectInfo>>, StorageError> {
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let mut set = tokio::task::JoinSet::new();
    for key in keys {
        let (storage, gate) = (storage.clone(), gate.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let found = storage.head(&key).await;
            (key, found)
        });
    }
    let mut out = HashMap::new();
    while let Some(done) = set.join_next().await {
        let (key, found) =
            done.map_err(|e| StorageError::backend("HeadObject", "", e.to_string()))?;
        out.insert(key, found?);
    }
    Ok(out)
}

fn name_order(name: &str) -> (u64, &str) {
    let n = name
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or(u64::MAX);
    (n, name)
}

/// Why feeding a file stopped.
#[derive(Debug, thiserror::Error)]
#[error("{name} ({object})")]
pub struct FileFailed {
    pub name: String,
    pub object: String,
    #[source]
    pub source: FeedError,
}

impl FileFailed {
    /// pg_restore stopped reading: its own error is the cause.
    pub fn is_sink(&self) -> bool {
        matches!(self.source, FeedError::Sink(_))
    }
}

impl DirBackup {
    /// The entries with a data block, in TOC order: what pg_restore reads in that order.
    pub fn block_ids(&self) -> Vec<i32> {
        self.dir
            .toc
            .entries
            .iter()
            .filter(|e| e.has_block())
            .map(|e| e.dump_id)
            .collect()
    }

    /// Writes the data block of entry `id` to `out`: each of its files fetched, verified
    /// against its own SHA-256 and size before the block's (or the large object's) last bytes
    /// and terminator go out. Blocking: call it on a blocking thread.
    fn feed_block<W: Write>(
        &self,
        fetch: &mut Fetcher,
        abandoned: &read_path::AbandonWatch,
        id: i32,
        out: &mut BlockWriter<W>,
    ) -> Result<Fed, FileFailed> {
        let sink = |e: std::io::Error, name: &str| FileFailed {
            name: name.to_string(),
            object: self
                .files
                .get(name)
                .map(|f| f.object.clone())
                .unwrap_or_default(),
            source: FeedError::Sink(e),
        };
        let file = &self.dir.files[&id];
        let mut total = Fed {
            sha256: String::new(),
            stored_bytes: 0,
            raw_bytes: 0,
        };
        let mut add = |f: Fed| {
            total.stored_bytes += f.stored_bytes;
            total.raw_bytes += f.raw_bytes;
        };
        match self.blobs.get(&id) {
            Some(list) => {
                out.begin_blobs(id).map_err(|e| sink(e, file))?;
                for (oid, name) in list {
                    out.begin_lo(*oid).map_err(|e| sink(e, name))?;
                    add(self.feed_file(fetch, abandoned, name, out)?);
                    out.end_lo().map_err(|e| sink(e, name))?;
                }
                // The list itself was verified when the backup was opened.
                add(Fed {
                    sha256: String::new(),
                    stored_bytes: self.files[file].stored_bytes,
                    raw_bytes: self.files[file].raw_bytes,
                });
            }
            None => {
                out.begin_data(id).map_err(|e| sink(e, file))?;
                add(self.feed_file(fetch, abandoned, file, out)?);
            }
        }
        out.end().map_err(|e| sink(e, file))?;
        Ok(total)
    }

    fn feed_file<W: Write>(
        &self,
        fetch: &mut Fetcher,
        abandoned: &read_path::AbandonWatch,
        name: &str,
        out: &mut BlockWriter<W>,
    ) -> Result<Fed, FileFailed> {
        let f = &self.files[name];
        let failed = |source: FeedError| FileFailed {
            name: name.to_string(),
            object: f.object.clone(),
            source,
        };
        let reader = fetch
            .open(&f.object)
            .map_err(|e| failed(FeedError::Read(storage_io(e))))?;
        let src = abandoned.reader(SyncIoBridge::new_with_handle(reader, fetch.rt.clone()));
        read_path::feed(
            src,
            &self.decode,
            out,
            Some(&expect_of(f)),
            Consumer::Strict,
        )
        .map_err(failed)
    }

    /// The objects the blocks of `ids` are read from, in the order they are read, with their
    /// stored sizes.
    fn objects_of(&self, ids: &[i32]) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for id in ids {
            let names: Vec<&String> = match self.blobs.get(id) {
                Some(list) => list.iter().map(|(_, n)| n).collect(),
                None => vec![&self.dir.files[id]],
            };
            for n in names {
                let f = &self.files[n];
                out.push((f.object.clone(), f.stored_bytes));
            }
        }
        out
    }

    /// What the whole backup amounts to, for the summary line: the manifest's totals and the
    /// TOC object's SHA-256 (the artifact's).
    pub fn totals(&self) -> Fed {
        Fed {
            sha256: self.toc_fed.sha256.clone(),
            stored_bytes: self.directory.stored_bytes,
            raw_bytes: self.directory.raw_bytes,
        }
    }
}

fn storage_io(e: StorageError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Restores a directory dump: in one transaction (see the module doc), or with `--jobs N` in
/// phases as `pg_restore -j` runs them (see [`crate::commands::restore::dir::jobs`]). Preflights as a single-file
/// restore does: the roles the TOC names must exist in the target.
pub async fn restore(
    storage: &Arc<dyn Storage>,
    entry: &Entry,
    decode: Decode,
    target: &PgTarget,
    opts: &RestoreOpts,
    privileges: Privileges,
    cancel: &CancellationToken,
) -> anyhow::Result<Restored> {
    let backup = Arc::new(open(storage, entry, decode).await?);
    let entries = contents::preflight_head(&backup.dir.custom_head, target, privileges).await?;
    let jobs = opts.jobs.unwrap_or(1).max(1) as usize;
    if jobs > 1 && !opts.clean {
        jobs::restore(&backup, storage, target, opts, jobs, cancel).await?;
    } else {
        if jobs > 1 {
            tracing::info!(key = %entry.key, "--clean drops everything first, which only one whole pg_restore can do: restoring in one transaction");
        }
        let one = RestoreOpts {
            jobs: None,
            ..opts.clone()
        };
        let run = FeedRun {
            backup: backup.clone(),
            storage: storage.clone(),
            target: target.clone(),
            opts: one,
            ids: backup.block_ids(),
            list: None,
            label: "pg_restore",
        };
        run.run(cancel).await.map_err(|e| {
            if e.downcast_ref::<FileFailed>().is_some() {
                e.context("restore stopped; nothing was committed")
            } else {
                e
            }
        })?;
    }
    Ok(Restored {
        fed: backup.totals(),
        entries,
    })
}

/// One pg_restore in one transaction, fed the archive's head and the blocks of `ids` (in TOC
/// order) on stdin: with `list`, only those entries; without, the whole archive.
pub(crate) struct FeedRun {
    pub backup: Arc<DirBackup>,
    pub storage: Arc<dyn Storage>,
    pub target: PgTarget,
    pub opts: RestoreOpts,
    pub ids: Vec<i32>,
    pub list: Option<std::path::PathBuf>,
    pub label: &'static str,
}

impl FeedRun {
    /// A file that fails its check is a [`FileFailed`] error: pg_restore was killed with its
    /// input open, so its transaction rolled back.
    pub async fn run(self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let mut child = pg::spawn_restore(
            &self.target.tools,
            &self.target.conn,
            &self.target.database,
            &self.opts,
            pg::RestoreRun {
                label: self.label,
                file: None,
                list: self.list.as_deref(),
            },
            self.target.redactor.clone(),
        )?;
        let stdin = child.take_stdin_file().context("pg_restore has no stdin")?;
        // Interrupted: the feed must stop reading too, not fetch the rest of the files.
        let abandoned = read_path::Abandoned::default();
        let watch = abandoned.watch();
        let rt = tokio::runtime::Handle::current();
        let (b, s, ids) = (self.backup.clone(), self.storage.clone(), self.ids);
        let task = tokio::task::spawn_blocking(move || {
            let mut out = BlockWriter::new(stdin, b.dir.int_size);
            let r = feed_blocks(&b, &s, &rt, &watch, &ids, &mut out);
            // The pipe goes back to the caller: it stays open until pg_restore is killed on
            // failure, or pg_restore would see a clean end of input.
            (r, out)
        });
        let (res, out) = tokio::select! {
            j = task => j.context("restore task panicked")?,
            _ = cancel.cancelled() => {
                let _ = child.terminate().await;
                return Err(Interrupted.into());
            }
        };
        match res {
            Ok(()) => {
                drop(out);
                tokio::select! {
                    r = child.wait() => { r?; }
                    _ = cancel.cancelled() => return Err(Interrupted.into()),
                }
                Ok(())
            }
            Err(e) if e.is_sink() => {
                // pg_restore stopped reading: its exit status and stderr are the real cause.
                drop(out);
                child.wait().await?;
                Err(e.into())
            }
            Err(e) => {
                let _ = child.terminate().await;
                drop(out);
                Err(e.into())
            }
        }
    }
}

fn feed_blocks<W: Write>(
    b: &DirBackup,
    storage: &Arc<dyn Storage>,
    rt: &tokio::runtime::Handle,
    abandoned: &read_path::AbandonWatch,
    ids: &[i32],
    out: &mut BlockWriter<W>,
) -> Result<(), FileFailed> {
    out.get_mut()
        .write_all(&b.dir.custom_head)
        .map_err(|e| FileFailed {
            name: crate::layout::DIR_ENTRY.into(),
            object: b.key.clone(),
            source: FeedError::Sink(e),
        })?;
    let mut fetch = Fetcher::new(storage.clone(), rt.clone(), b.objects_of(ids));
    for id in ids {
        b.feed_block(&mut fetch, abandoned, *id, out)?;
    }
    Ok(())
}

/// Small files read one after another would each wait for a GET's round trip (a directory
/// dump has one object per large object): the next few are requested while one is read, as
/// long as only small files stand between (a response left unread for long could time out).
pub(crate) struct Fetcher {
    storage: Arc<dyn Storage>,
    pub rt: tokio::runtime::Handle,
    /// Objects still to request, in reading order, with their sizes.
    plan: std::collections::VecDeque<(String, u64)>,
    ahead: std::collections::VecDeque<(String, u64, tokio::task::JoinHandle<GetResult>)>,
}

type GetResult = Result<crate::storage::Reader, StorageError>;

/// Requests in flight beyond the one being read.
const AHEAD: usize = 4;
/// Only files smaller than this are read ahead of.
const SMALL_FILE: u64 = 1 << 20;

impl Fetcher {
    pub fn new(
        storage: Arc<dyn Storage>,
        rt: tokio::runtime::Handle,
        plan: Vec<(String, u64)>,
    ) -> Fetcher {
        Fetcher {
            storage,
            rt,
            plan: plan.into(),
            ahead: Default::default(),
        }
    }

    fn request(&mut self) {
        if let Some((key, size)) = self.plan.pop_front() {
            let storage = self.storage.clone();
            let k = key.clone();
            let h = self.rt.spawn(async move { storage.get(&k).await });
            self.ahead.push_back((key, size, h));
        }
    }

    /// The reader of `key`, the next in the plan (anything else is read without read-ahead).
    pub fn open(&mut self, key: &str) -> GetResult {
        if self.ahead.is_empty() {
            self.request();
        }
        let (k, size, h) = self.ahead.pop_front().expect("requested above");
        if k != key {
            // Not the planned order: no read-ahead from here on.
            self.plan.clear();
            self.ahead.clear();
            return self.rt.block_on(self.storage.get(key));
        }
        // Read ahead only while everything between is small.
        if size < SMALL_FILE {
            while self.ahead.len() < AHEAD
                && self.ahead.iter().all(|(_, s, _)| *s < SMALL_FILE)
                && !self.plan.is_empty()
            {
                self.request();
            }
        }
        self.rt
            .block_on(h)
            .map_err(|e| StorageError::backend("GetObject", key, e.to_string()))?
    }
}
