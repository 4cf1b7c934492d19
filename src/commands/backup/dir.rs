//! `backup --jobs N`: pg_dump's directory format, each file followed while pg_dump writes it
//! and streamed into its own object (compressed, [sealed], hashed) as it grows.
//!
//! Storage: the entry key holds `toc.dat`; every other file is its own object under the run's
//! id in the backup's `.pgdir/` folder (see `crate::layout`). Uploads of more than one part
//! stay open until pg_dump exited 0 and every file was read to its end: only then are they
//! completed, then the entry (create-only: the same collision rule as a single-file backup),
//! then the manifest. One-part files are completed as soon as they are read (held open, each
//! would sit in memory until the end). Nothing is a backup before its entry and manifest: a
//! kill leaves open uploads and data objects in a folder without an entry, both of which
//! `prune --abort-incomplete-older-than` removes; a failure or a signal stops pg_dump's whole
//! process group, aborts every upload, deletes what this run completed and removes the spool.
//!
//! Local disk is bounded by `BACKUP_SPOOL_BUDGET`: above it pg_dump's process group is paused
//! (SIGSTOP), below half of it continued. Open files never wait for an upload slot (there are
//! more slots than pg_dump can have files open), so a pause always ends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;

use super::*;
use crate::manifest::{Directory, DumpFile, StoredObject};
use crate::private_fs::PrivateDir;
use crate::source::pg_probe::{self, Verdict};
use crate::storage::Stored;
use crate::write_path::follow::{self, DirEvent, DirWatch, Follow, FollowReader};

/// One file read to its end, its object's upload still open.
struct Streamed {
    name: String,
    key: String,
    upload: Box<dyn Upload>,
    stats: StreamStats,
}

/// What a follower gives back: its upload still open, or (a file of one part, which the
/// upload would otherwise hold in memory until the end) already completed.
enum Followed {
    Open(Streamed),
    Done(Finished),
}

/// One object this run completed.
struct Finished {
    file: Streamed,
    stored: Stored,
}

/// Everything the run has opened or created, so a failure can take it all back.
#[derive(Default)]
struct Outcome {
    streamed: Vec<Streamed>,
    finished: Vec<Finished>,
}

impl Outcome {
    fn add(&mut self, f: Followed) {
        match f {
            Followed::Open(s) => self.streamed.push(s),
            Followed::Done(f) => self.finished.push(f),
        }
    }

    /// Aborts every open upload and deletes every object this run completed: all under its
    /// own run id, or the entry it created itself.
    async fn discard(mut self, job: &Job) {
        for s in &mut self.streamed {
            abort_upload(s.upload.as_mut(), &s.key).await;
        }
        let keys: Vec<String> = self.finished.iter().map(|f| f.file.key.clone()).collect();
        if !keys.is_empty() {
            if let Err(e) = job.storage.delete(&keys).await {
                tracing::warn!(error = %e, "could not delete the objects of a failed parallel backup; `prune` removes them");
            }
        }
    }
}

/// Uploads (each with its follower thread) at most this many more than pg_dump's jobs: pg_dump
/// has at most `2 * jobs + 1` files open at once (a worker's blobs TOC beside its blob file,
/// the leader's toc.dat), so a file waiting for a slot never blocks a paused pg_dump.
fn upload_slots(jobs: u32) -> usize {
    2 * jobs as usize + 2
}

/// Room a spool needs beyond its budget: pg_dump writes on between two looks at the spool.
const SPOOL_SLACK: u64 = 64 << 20;

/// Before any target runs (exit 2): the spool's file system must have room for the budget and
/// give punched ranges back, or the disk would hold whole files, not the budget.
pub(super) fn check_spool(s: &PgSettings) -> Result<(), ConfigError> {
    let dir = &s.spool_parent;
    let at = |e: std::io::Error| {
        ConfigError::invalid(
            "BACKUP_WORK_DIR",
            format!(
                "{}: cannot hold the spool of a parallel dump: {e}",
                dir.display()
            ),
        )
    };
    let free = crate::private_fs::free_bytes(dir).map_err(at)?;
    if free < s.spool_budget + SPOOL_SLACK {
        return Err(ConfigError::invalid(
            "BACKUP_WORK_DIR",
            format!(
                "{}: {} MiB free, a parallel dump's spool needs BACKUP_SPOOL_BUDGET ({} MiB) + {} MiB: point it at a larger volume or lower the budget",
                dir.display(),
                free >> 20,
                s.spool_budget >> 20,
                SPOOL_SLACK >> 20
            ),
        ));
    }
    if !crate::private_fs::can_punch(dir).map_err(at)? {
        return Err(ConfigError::invalid(
            "BACKUP_WORK_DIR",
            format!("{}: its file system cannot punch holes (fallocate PUNCH_HOLE), so the spool of a parallel dump would hold whole files: use ext4, xfs or tmpfs", dir.display()),
        ));
    }
    Ok(())
}

/// Before any target runs (exit 2): a host whose pooler hands one client's server session to
/// the next (PgBouncer in transaction mode behind any name), or a standby before PostgreSQL
/// 10, cannot give pg_dump's workers the leader's snapshot. Poolers known by name were refused
/// by the settings; this asks each database, as its dump will connect to it (see
/// [`pg_probe`]). A database that cannot be asked (down, wrong password) is returned with why:
/// its parallel dump is not started on a host nobody checked, and fails as its target, while
/// the run's other targets (other databases, MongoDB) go on as they would with one job.
pub(super) async fn check_pooling(
    s: &PgSettings,
    tools: &PgTools,
    redactor: &Redactor,
) -> anyhow::Result<Unchecked> {
    // Hex, random per process: safe inside the probe's SQL literal.
    let nonce = crate::storage::run_id();
    let mut unchecked = Unchecked::new();
    for db in &s.conn.databases {
        let verdict = match pg_probe::probe(tools, &s.conn, db, nonce, redactor).await {
            Ok(v) => v,
            Err(e) => {
                let why = anyhow::Error::from(e).context(format!(
                    "checking {}:{} (database {db}) for a transaction pooler before a parallel dump (PG_JOBS), so the dump was not started",
                    s.conn.host, s.conn.port
                ));
                tracing::warn!(database = %db, error = %format!("{why:#}"), "pooler check failed");
                unchecked.insert(db.clone(), format!("{why:#}"));
                continue;
            }
        };
        match verdict {
            Verdict::SharedSessions => {
                return Err(ConfigError::invalid(
                    "PG_JOBS",
                    format!(
                        "{}:{} is a transaction pooler (a new connection got another client's session), which cannot share pg_dump's snapshot between its connections: back up through the server's direct address, not the pooler, or set PG_JOBS=1",
                        s.conn.host, s.conn.port
                    ),
                )
                .into())
            }
            Verdict::OldStandby { version_num } => {
                return Err(ConfigError::invalid(
                    "PG_JOBS",
                    format!(
                        "{}:{} is a standby running PostgreSQL {}, which cannot export pg_dump's snapshot to its workers (10 or later can): back up from the primary, or set PG_JOBS=1",
                        s.conn.host,
                        s.conn.port,
                        version_num / 10_000
                    ),
                )
                .into())
            }
            Verdict::SessionPool { backend_age } => {
                tracing::info!(host = %s.conn.host, database = %db, backend_age, "the server session was older than the connection: a session pooler, which keeps each connection's session (a parallel dump works through it)");
            }
            Verdict::Direct => {}
        }
    }
    Ok(unchecked)
}

/// Databases the pooler check could not ask, and why.
pub(super) type Unchecked = std::collections::HashMap<String, String>;

/// Objects completed at once.
const FINISH_CONCURRENCY: usize = 8;

pub(super) async fn run_dir_target(job: &Job, t: &Target) -> Result<Manifest, TargetError> {
    if let Some(why) = job.unchecked.get(&t.database) {
        return Err(TargetError::Other(anyhow::anyhow!("{why}")));
    }
    let started_at = Utc::now();
    let (s, tools) = job.pg.as_ref().expect("postgres target implies settings");
    let mut out = Outcome::default();
    // The timeout covers the whole target, completing its objects included.
    let deadline = job.timeout.map(|d| tokio::time::Instant::now() + d);
    let dumped = dump(job, s, tools, t, &mut out, deadline).await;
    let (source, contents) = match dumped {
        Ok(dumped) => dumped,
        Err(e) => {
            out.discard(job).await;
            return Err(e);
        }
    };
    match complete(
        job,
        t,
        s,
        &mut out,
        (source, contents),
        started_at,
        deadline,
    )
    .await
    {
        Ok(m) => Ok(m),
        Err(e) => {
            out.discard(job).await;
            Err(e)
        }
    }
}

/// Sets the shared stop flag when dropped: a follower never outlives its run waiting for a
/// file that will not grow.
struct StopOnDrop(Arc<Follow>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// pg_dump into the spool, every file streamed into its upload; on return every file was read
/// to its end (`Ok`) or everything was stopped (`Err`, the spool removed, pg_dump gone).
async fn dump(
    job: &Job,
    s: &PgSettings,
    tools: &PgTools,
    t: &Target,
    out: &mut Outcome,
    deadline: Option<tokio::time::Instant>,
) -> Result<(SourceInfo, Option<crate::source::pg_toc::Contents>), TargetError> {
    let server = pg::server_version(tools, &s.conn, &t.database, &job.redactor)
        .await
        .context("connecting to PostgreSQL")?;
    tools.check_server(&server).map_err(anyhow::Error::from)?;
    let spool = PrivateDir::new_in(&s.spool_parent, "pgdir").with_context(|| {
        format!(
            "creating the spool in {} (BACKUP_WORK_DIR)",
            s.spool_parent.display()
        )
    })?;
    let follow = Arc::new(Follow::default());
    let _stop = StopOnDrop(follow.clone());
    let (watch, events) = DirWatch::start(spool.path()).context("watching the spool")?;
    let mut child = pg::spawn_dir_dump(
        tools,
        &s.conn,
        &t.database,
        spool.path(),
        s.jobs,
        &s.extra_args,
        job.redactor.clone(),
    )
    .map_err(anyhow::Error::from)?;
    let pgid = child.pid().context("pg_dump exited at once")?;
    let progress = Progress::for_terminal(format!("postgres {} (jobs {})", t.database, s.jobs));
    let mut run = Run {
        job,
        t,
        s,
        out,
        dir: spool.path().to_path_buf(),
        follow: follow.clone(),
        files: HashMap::new(),
        toc_closed: false,
        tasks: JoinSet::new(),
        slots: Arc::new(Semaphore::new(upload_slots(s.jobs))),
        progress: progress.clone(),
        budget: Budget::new(pgid, s.spool_budget),
        version: tools.version.clone(),
        toc_copy: Arc::new(std::sync::Mutex::new(Some(Vec::new()))),
        deadline,
    };
    let toc_copy = run.toc_copy.clone();
    let result = run.run(child, watch, events).await;
    progress.done();
    // pg_dump's group is gone (see `Run::follow`): nothing writes into the spool any more.
    drop(run);
    drop(spool);
    result?;
    let toc = toc_copy.lock().unwrap_or_else(|p| p.into_inner()).take();
    let contents = match toc {
        Some(toc) => {
            match contents::dir_contents(tools, &toc, &s.spool_parent, job.redactor.clone()).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(database = %t.database, error = %job.redactor.redact(&format!("{e:#}")), "could not summarise the dump's contents for the manifest");
                    None
                }
            }
        }
        None => None,
    };
    let source = super::dump::pg_source("pg_dump", tools, s, server.text);
    Ok((source, contents))
}

/// SIGSTOP above the budget, SIGCONT below half of it; a pause in which no reader moved for a
/// while is ended (a deadlock guard: it should not happen, see [`upload_slots`]).
struct Budget {
    pgid: u32,
    limit: u64,
    paused: Option<(std::time::Instant, u64)>,
    /// After the guard continued pg_dump: no new pause until the readers moved.
    hold_off: Option<u64>,
}

const STALL: Duration = Duration::from_secs(5);

impl Budget {
    fn new(pgid: u32, limit: u64) -> Budget {
        Budget {
            pgid,
            limit,
            paused: None,
            hold_off: None,
        }
    }

    fn tick(&mut self, dir: &Path, consumed: u64) {
        let used = follow::allocated(dir);
        match self.paused {
            None if used > self.limit && self.hold_off.is_none_or(|c| c != consumed) => {
                tracing::debug!(spool_bytes = used, "spool full: pausing pg_dump");
                crate::source::child::signal_group(self.pgid, libc::SIGSTOP);
                self.paused = Some((std::time::Instant::now(), consumed));
                self.hold_off = None;
            }
            Some((since, at)) if used <= self.limit / 2 => {
                tracing::debug!(
                    spool_bytes = used,
                    paused_ms = since.elapsed().as_millis() as u64,
                    moved = consumed - at,
                    "spool drained: continuing pg_dump"
                );
                self.resume();
            }
            Some((since, at)) if at == consumed && since.elapsed() > STALL => {
                tracing::warn!(spool_bytes = used, "no upload progressed for {STALL:?} while pg_dump was paused: continuing it over the spool budget");
                self.resume();
                self.hold_off = Some(consumed);
            }
            Some((since, at)) if at != consumed => self.paused = Some((since, consumed)),
            _ => {}
        }
    }

    fn resume(&mut self) {
        if self.paused.take().is_some() {
            crate::source::child::signal_group(self.pgid, libc::SIGCONT);
        }
    }
}

struct Run<'a> {
    job: &'a Job,
    t: &'a Target,
    s: &'a PgSettings,
    out: &'a mut Outcome,
    dir: PathBuf,
    follow: Arc<Follow>,
    /// Every file seen, with its "closed by pg_dump" flag.
    files: HashMap<String, Arc<AtomicBool>>,
    toc_closed: bool,
    tasks: JoinSet<anyhow::Result<Followed>>,
    slots: Arc<Semaphore>,
    progress: Progress,
    budget: Budget,
    version: String,
    /// When `BACKUP_TIMEOUT` runs out for this target.
    deadline: Option<tokio::time::Instant>,
    /// The bytes of toc.dat (`None` past [`TOC_COPY_LIMIT`]), for the manifest's contents.
    toc_copy: TocCopy,
}

type TocCopy = Arc<std::sync::Mutex<Option<Vec<u8>>>>;

/// Most bytes of toc.dat kept for the contents summary; a bigger TOC (hundreds of thousands
/// of tables or large objects) goes without one.
const TOC_COPY_LIMIT: usize = 64 << 20;

/// A reader that keeps a copy of what it reads (when `copy` is set), up to [`TOC_COPY_LIMIT`].
struct CopyOf<R> {
    inner: R,
    copy: Option<TocCopy>,
}

impl<R: std::io::Read> std::io::Read for CopyOf<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(copy) = &self.copy {
            let mut c = copy.lock().unwrap_or_else(|p| p.into_inner());
            if c.as_ref().is_some_and(|v| v.len() + n > TOC_COPY_LIMIT) {
                *c = None;
            } else if let Some(v) = c.as_mut() {
                v.extend_from_slice(&buf[..n]);
            }
        }
        Ok(n)
    }
}

impl Run<'_> {
    /// Until pg_dump exited 0 and every file it wrote was read to its end and streamed; any
    /// failure, the run's cancellation or its timeout stops pg_dump's whole process group and
    /// every follower first.
    async fn run(
        &mut self,
        child: ChildProc,
        watch: DirWatch,
        events: tokio::sync::mpsc::UnboundedReceiver<DirEvent>,
    ) -> Result<(), TargetError> {
        let result = self.follow(child, watch, events).await;
        if result.is_err() {
            self.follow.stop.store(true, Ordering::SeqCst);
            // Aborted followers drop their uploads, whose `Drop` aborts them (main waits for
            // that before exiting); those that had returned are aborted by `discard`.
            self.tasks.abort_all();
            while let Some(joined) = self.tasks.join_next().await {
                if let Ok(Ok(done)) = joined {
                    self.out.add(done);
                }
            }
        }
        result
    }

    async fn follow(
        &mut self,
        child: ChildProc,
        watch: DirWatch,
        mut events: tokio::sync::mpsc::UnboundedReceiver<DirEvent>,
    ) -> Result<(), TargetError> {
        let pgid = self.budget.pgid;
        let mut exit = Box::pin(child.wait());
        let job = self.job;
        let stopped = stopped(job, self.deadline);
        tokio::pin!(stopped);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut exited = false;
        let phase1: Result<(), TargetError> = loop {
            tokio::select! {
                Some(ev) = events.recv() => {
                    if let Err(e) = self.event(ev, true) {
                        break Err(e.into());
                    }
                }
                status = &mut exit => {
                    exited = true;
                    break status.map(|_| ()).map_err(|e| anyhow::Error::from(e).into());
                }
                Some(joined) = self.tasks.join_next() => {
                    if let Err(e) = self.joined(joined) {
                        break Err(e.into());
                    }
                }
                _ = tick.tick() => {
                    let consumed = self.follow.consumed.load(Ordering::Relaxed);
                    self.budget.tick(&self.dir, consumed);
                }
                why = &mut stopped => break Err(why),
            }
        };
        if let Err(e) = phase1 {
            self.follow.stop.store(true, Ordering::SeqCst);
            if !exited {
                // As ChildProc::terminate: SIGTERM (and SIGCONT, the group may be paused),
                // then SIGKILL if pg_dump lingers.
                signal_group(pgid, libc::SIGTERM);
                signal_group(pgid, libc::SIGCONT);
                if tokio::time::timeout(Duration::from_secs(2), &mut exit)
                    .await
                    .is_err()
                {
                    signal_group(pgid, libc::SIGKILL);
                    let _ = exit.await;
                }
            }
            group_gone(pgid).await;
            return Err(e);
        }
        // pg_dump exited 0: every file it wrote is complete as it stands.
        self.follow.dump_done.store(true, Ordering::SeqCst);
        self.budget.resume();
        group_gone(pgid).await;
        watch.finish();
        while let Some(ev) = events.recv().await {
            self.event(ev, true)?;
        }
        self.rescan()?;
        if !self.files.contains_key(layout::DIR_ENTRY) {
            return Err(anyhow::anyhow!("pg_dump exited 0 without writing toc.dat").into());
        }
        loop {
            tokio::select! {
                joined = self.tasks.join_next() => match joined {
                    Some(joined) => self.joined(joined)?,
                    None => return Ok(()),
                },
                why = &mut stopped => return Err(why),
            }
        }
    }

    fn joined(
        &mut self,
        joined: Result<anyhow::Result<Followed>, tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        match joined {
            Ok(Ok(done)) => {
                self.out.add(done);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a file's upload task failed: {e}")),
        }
    }

    fn event(&mut self, ev: DirEvent, ordered: bool) -> anyhow::Result<()> {
        // The order pg_dump's files appear and close in, for a test to read (`toc_comes_first`).
        tracing::trace!(event = ?ev, ordered, "spool event");
        match ev {
            DirEvent::Created(name) => {
                // Each file is followed once and removed at its end: a file made again (an
                // append-mode reopen) would lose what was written before.
                if self.files.contains_key(&name) {
                    anyhow::bail!(
                        "pg_dump {} created {name} a second time: unsupported",
                        self.version
                    );
                }
                self.file(&name, ordered)?;
            }
            DirEvent::Closed(name) => {
                self.file(&name, ordered)?.store(true, Ordering::SeqCst);
                if name == layout::DIR_ENTRY {
                    self.toc_closed = true;
                }
            }
            DirEvent::Overflow => {
                tracing::debug!("inotify queue overflowed: reading the spool again");
                self.rescan()?;
            }
        }
        Ok(())
    }

    /// Files in the spool no event announced (a queue overflow): followed from now on; when
    /// each was closed is then known only from pg_dump's exit.
    fn rescan(&mut self) -> anyhow::Result<()> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).context("reading the spool")? {
            let entry = entry.context("reading the spool")?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        names.sort_by_key(|n| n != layout::DIR_ENTRY);
        for name in names {
            self.file(&name, false)?;
        }
        Ok(())
    }

    /// The flag of a file, followed from its first sighting on. `ordered`: the file's creation
    /// was seen in order, so a data file before the TOC's close is pg_dump breaking the order
    /// this depends on (its TOC names every data file, written first, never patched).
    fn file(&mut self, name: &str, ordered: bool) -> anyhow::Result<Arc<AtomicBool>> {
        if let Some(f) = self.files.get(name) {
            return Ok(f.clone());
        }
        if ordered && name != layout::DIR_ENTRY && !self.toc_closed {
            anyhow::bail!(
                "pg_dump {} wrote data ({name}) before its TOC: unsupported",
                self.version
            );
        }
        if name.contains('/') || name.starts_with('.') {
            anyhow::bail!("pg_dump wrote an unexpected file {name:?}");
        }
        let closed = Arc::new(AtomicBool::new(false));
        self.files.insert(name.to_string(), closed.clone());
        let ext = &self.t.key
            [self.t.key.rfind(layout::DIR_ENTRY).unwrap_or(0) + layout::DIR_ENTRY.len()..];
        let key = if name == layout::DIR_ENTRY {
            self.t.key.clone()
        } else {
            layout::dir_file_key(&self.t.key, crate::storage::run_id(), name, ext)
                .context("the target's key is not a directory dump's")?
        };
        let codec = match self.s.compression {
            PgCompression::Zstd => Codec::Zstd {
                level: self.s.level,
                // No worker threads: pg_dump's jobs already give as many files side by side.
                threads: 0,
            },
            PgCompression::Pg | PgCompression::None => Codec::Identity,
        };
        let storage = self.job.storage.clone();
        let encrypt = self.job.encrypt.clone();
        let (path, follow, slots, progress) = (
            self.dir.join(name),
            self.follow.clone(),
            self.slots.clone(),
            self.progress.clone(),
        );
        let (name, flag) = (name.to_string(), closed.clone());
        let toc_copy = (name == layout::DIR_ENTRY).then(|| self.toc_copy.clone());
        self.tasks.spawn(crate::cleanup::tracked(async move {
            let _slot = slots.acquire_owned().await.context("upload slots closed")?;
            let file =
                follow::open_rw(&path).with_context(|| format!("opening {}", path.display()))?;
            let mut upload = storage.begin(&key).await?;
            let reader = CopyOf {
                inner: FollowReader::new(file, path, flag, follow),
                copy: toc_copy,
            };
            let inner: Producer =
                Box::new(move |sink| write_path::copy_encoded(reader, sink, codec));
            let producer = match &encrypt {
                Some(r) => r.encrypting(inner),
                None => inner,
            };
            let one_part = storage.part_size(0) as u64;
            let stats = match write_path::stream(storage, upload.as_mut(), producer, progress).await
            {
                Ok(stats) => stats,
                Err(e) => {
                    abort_upload(upload.as_mut(), &key).await;
                    return Err(anyhow::Error::from(e).context(format!("streaming {name}")));
                }
            };
            let mut file = Streamed {
                name,
                key,
                upload,
                stats,
            };
            // A one-part file waits in memory for its completion: complete it now (a data
            // object under this run's id, deleted if the run fails), so memory does not grow
            // with the number of small tables. The TOC is the entry: completed last.
            if file.name == layout::DIR_ENTRY || file.stats.stored_bytes > one_part {
                return Ok(Followed::Open(file));
            }
            match file.upload.finish().await {
                Ok(stored) => Ok(Followed::Done(Finished { file, stored })),
                Err(e) => {
                    abort_upload(file.upload.as_mut(), &file.key).await;
                    Err(anyhow::Error::from(e).context(format!("completing {}", file.key)))
                }
            }
        }));
        Ok(closed)
    }
}

fn signal_group(pgid: u32, signal: i32) {
    crate::source::child::signal_group(pgid, signal);
}

/// Waits (a few seconds at most, SIGKILLing) until no process of pg_dump's group is left: its
/// workers are not its leader, and a worker still holding a connection and a snapshot must not
/// outlive a failed run.
async fn group_gone(pgid: u32) {
    for round in 0..100 {
        // SAFETY: kill(2) with signal 0 only checks that the group exists.
        let r = unsafe { libc::kill(-(pgid as i32), 0) };
        if r != 0 {
            return;
        }
        if round >= 40 {
            signal_group(pgid, libc::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(pgid, "pg_dump's process group is still there after 5 s");
}

/// pg_dump exited 0 and every file is in its upload: completes the data objects, then the entry
/// (create-only), then the manifest.
async fn complete(
    job: &Job,
    t: &Target,
    s: &PgSettings,
    out: &mut Outcome,
    (source, contents): (SourceInfo, Option<crate::source::pg_toc::Contents>),
    started_at: chrono::DateTime<Utc>,
    deadline: Option<tokio::time::Instant>,
) -> Result<Manifest, TargetError> {
    let toc_at = out
        .streamed
        .iter()
        .position(|f| f.name == layout::DIR_ENTRY)
        .context("no toc.dat was streamed")?;
    let toc = out.streamed.remove(toc_at);
    out.streamed.push(toc);
    finish_data(job, out, deadline).await?;
    let files: Vec<DumpFile> = out
        .finished
        .iter()
        .map(|f| DumpFile {
            name: f.file.name.clone(),
            object: f.file.key.clone(),
            offset: 0,
            stored_bytes: f.file.stats.stored_bytes,
            raw_bytes: f.file.stats.raw_bytes,
            sha256: f.file.stats.sha256.clone(),
        })
        .collect();
    let toc = out.streamed.last().expect("the toc is what is left");
    let raw_bytes = toc.stats.raw_bytes + files.iter().map(|f| f.raw_bytes).sum::<u64>();
    let stored_bytes = toc.stats.stored_bytes + files.iter().map(|f| f.stored_bytes).sum::<u64>();
    // The entry last of the objects: create-only, so of two runs in the same second one wins
    // and the other discards everything of its own.
    let mut toc = out.streamed.pop().expect("the toc is what is left");
    let stored = match toc.upload.finish().await {
        Ok(stored) => stored,
        Err(e) => {
            abort_upload(toc.upload.as_mut(), &toc.key).await;
            return Err(anyhow::Error::from(e).into());
        }
    };
    let m = Manifest {
        format: manifest::FORMAT_DIRECTORY,
        contents,
        directory: Some(Directory {
            jobs: s.jobs,
            raw_bytes,
            stored_bytes,
            objects: out
                .finished
                .iter()
                .map(|f| StoredObject {
                    key: f.file.key.clone(),
                    size: f.file.stats.stored_bytes,
                    parts: f.stored.parts,
                    etag: f.stored.etag.clone(),
                    version_id: f.stored.version_id.clone(),
                })
                .collect(),
            files,
        }),
        ..super::manifest_of(job, t, started_at, &toc.stats, &stored, source)
    };
    if let Err(e) = job
        .storage
        .put_new(&t.manifest_key, m.to_bytes(), "application/json")
        .await
    {
        if !matches!(e, StorageError::Exists(_)) {
            // Ours, just created: an entry without its manifest must not look like a backup.
            out.finished.push(Finished { file: toc, stored });
        }
        return Err(anyhow::Error::from(e)
            .context("writing the manifest")
            .into());
    }
    out.finished.push(Finished { file: toc, stored });
    still_there(job, t, &m).await?;
    Ok(m)
}

/// Completes every data object, [`FINISH_CONCURRENCY`] at once; leaves the TOC's upload (the
/// last of `out.streamed`) open. On failure, what could not be completed is aborted.
async fn finish_data(
    job: &Job,
    out: &mut Outcome,
    deadline: Option<tokio::time::Instant>,
) -> Result<(), TargetError> {
    let toc = out.streamed.pop().expect("the toc is last");
    let mut pending = std::mem::take(&mut out.streamed);
    let mut set = JoinSet::new();
    let mut failure: Option<TargetError> = None;
    let stopped = stopped(job, deadline);
    tokio::pin!(stopped);
    loop {
        while set.len() < FINISH_CONCURRENCY && failure.is_none() {
            let Some(mut f) = pending.pop() else { break };
            set.spawn(crate::cleanup::tracked(async move {
                let r = f.upload.finish().await;
                (f, r)
            }));
        }
        let joined = tokio::select! {
            joined = set.join_next() => joined,
            why = &mut stopped, if failure.is_none() => {
                // Completions cut short: their uploads' `Drop` aborts them (awaited by main).
                set.abort_all();
                failure = Some(why);
                continue;
            }
        };
        let Some(joined) = joined else {
            break;
        };
        match joined {
            Ok((file, Ok(stored))) => out.finished.push(Finished { file, stored }),
            Ok((mut file, Err(e))) => {
                abort_upload(file.upload.as_mut(), &file.key).await;
                failure.get_or_insert(
                    anyhow::Error::from(e)
                        .context(format!("completing {}", file.key))
                        .into(),
                );
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failure.get_or_insert(anyhow::anyhow!("completing an object: {e}").into());
            }
        }
    }
    out.streamed = pending;
    out.streamed.push(toc);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Resolves when the run is cancelled (a signal) or the target's time is up.
async fn stopped(job: &Job, deadline: Option<tokio::time::Instant>) -> TargetError {
    let timeout = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = job.cancel.cancelled() => TargetError::Interrupted,
        _ = timeout => TargetError::TimedOut(job.timeout.unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// The state letter of `pid` in /proc (`T`: stopped).
    fn state(pid: u32) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.chars().next().unwrap()
    }

    #[test]
    fn budget_pauses_the_group_when_full_and_continues_it_below_half() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let spool = tempfile::tempdir().unwrap();
        let file = spool.path().join("3051.dat");
        std::fs::write(&file, vec![7u8; 2 << 20]).unwrap();
        let mut budget = Budget::new(pid, 1 << 20);
        budget.tick(spool.path(), 0);
        let paused = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            state(pid) == 'T'
        });
        assert!(paused, "stopped above the budget");
        // Still full, but the readers moved: no deadlock, it stays paused.
        budget.tick(spool.path(), 10);
        assert!(budget.paused.is_some());
        std::fs::remove_file(&file).unwrap();
        budget.tick(spool.path(), 20);
        let running = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            state(pid) != 'T'
        });
        assert!(running, "continued below half the budget");
        assert!(budget.paused.is_none());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
