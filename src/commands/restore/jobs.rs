//! `restore --jobs N`: a parallel restore that starts while the archive is still downloading.
//!
//! pg_restore's own parallel mode needs the whole archive in a seekable file, so a parallel
//! restore used to download first and restore after, the download's time added to the
//! restore's. Here the object streams once (checks → decode) into a private spool file
//! ([`crate::read_path::spool`]) while [`pg_archive`] reads its TOC and where each data block starts and
//! ends, and the three phases `pg_restore -j` itself runs each start as soon as they can:
//!
//! 1. pre-data, main pass (the definitions) in one transaction, once the TOC is in and the role
//!    preflight passed;
//! 2. the data blocks, by up to N pg_restore processes fed from the spool as blocks arrive: a big
//!    table streams into its COPY while it downloads, small ones go in batches;
//! 3. everything else of the main pass (indexes, constraints, sequence values), once every
//!    byte has arrived and matched the manifest's checksum: each entry as soon as the data of
//!    the tables it depends on committed, while other tables still load, as `pg_restore -j`
//!    does ([`Plan::ready`], [`Pipeline::start_wave`]); what is left once all data is in with
//!    `pg_restore -j N`; then the privileges and
//!    matview refreshes (the ACL and post-ACL passes) in one serial pg_restore, because
//!    `pg_restore -j` runs grants side by side and a grant made by a non-owner can then come
//!    before the schema grant it needs ([`pg_archive::Plan::privileges`]).
//!
//! Each phase is pg_restore on `--use-list`s cut from the archive's own TOC
//! ([`pg_archive::Plan`]), so the result is what one pg_restore of the whole archive gives; the
//! tests compare `pg_dump` output. Like `pg_restore -j` it is not one transaction: a failure
//! after phase 1 leaves the target partly restored, and the error says so.
//!
//! No table's data commits before the bytes that made it were verified. Each data pg_restore
//! runs in one transaction and is fed its blocks as they arrive, except the last
//! [`HOLD_BACK`] bytes of its stream: those are withheld until the whole object matched the
//! manifest's SHA-256 (the download closes the spool with success only then). Without its
//! last bytes a pg_restore cannot finish its last COPY, so it cannot commit; on a damaged
//! object it is stopped and its transaction rolls back. A pg_restore that is only waiting
//! for the verdict gives its slot back, so the others go on loading as the object arrives.
//!
//! The download is held back by two limits only ([`crate::read_path::spool`]): the spool's budget
//! (`--spool-budget`, default half the free disk), and, once the last table arrives, that
//! table's own pg_restore (running ahead of it serves nobody). The second used to count every
//! byte not yet restored, so the last table's download, and its pg_restore, waited for the
//! table before it to finish loading: two big tables loaded one after the other (issue 34).
//!
//! The last table's pg_restore, when it starts while its table is still arriving, is fed
//! from the download through memory ([`Spool::direct`]), not through the spool file, which
//! nothing else reads those bytes from (issue 34: with one big table the spool's write and
//! read back was what `--jobs` paid over the streaming restore). The hold-back is the same.
//!
//! With `BACKHAUL_LOG=backhaul=debug` the log traces the schedule: when each block arrives,
//! when each pg_restore starts, is fed, commits, how long the download waited on each limit.
//!
//! `--clean`, and archives [`pg_archive`] does not read, restore after the download instead.

use std::collections::{HashSet, VecDeque};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::io::SyncIoBridge;
use tokio_util::sync::CancellationToken;

use crate::commands::restore::PgTarget;
use crate::commands::Interrupted;
use crate::read_path::spool::{End, Spool};
use crate::read_path::{self, Consumer, Decode, Expect, Fed};
use crate::source::pg_archive::{self, ArchiveError, Event, Plan, Scanner, Toc};
use crate::source::postgres::{self as pg, RestoreOpts, RestoreRun};
use crate::storage::Storage;

/// A block this big gets a pg_restore of its own: complete ones largest first (as
/// `pg_restore -j` orders them), and one still arriving is fed as it downloads, so a big table
/// loads while it downloads.
const BIG: u64 = 4 << 20;
/// Small blocks share a pg_restore, at most this many bytes or entries: a database of many
/// small tables must not start a pg_restore per table.
const BATCH_BYTES: u64 = 64 << 20;
const BATCH_ENTRIES: usize = 1000;
/// How far the download may run ahead of the last table's pg_restore (see
/// [`Spool::pace_from`]): only that table's bytes count, never an earlier table's backlog.
const LAST_BLOCK_LEAD: u64 = 32 << 20;
/// How many bytes of the last table the download may hold in memory for its pg_restore (see
/// [`Spool::direct`]): instead of the spool file, which costs a write and a read of every byte
/// through new page cache.
const DIRECT_LEAD: u64 = 8 << 20;
/// How long a block waits for others to share a pg_restore with.
const LINGER: Duration = Duration::from_millis(200);
/// How often waiting blocks are looked at again when nothing else happens.
const TICK: Duration = Duration::from_millis(50);
/// Bytes of each data pg_restore's input withheld until the object is verified: more than
/// the end of any block (a few bytes), so its last COPY cannot finish.
const HOLD_BACK: usize = 64 << 10;
/// pg_restore processes that may wait for the verdict at once, beyond the N loading: each
/// holds a connection. Past it, new batches wait for the verdict too.
const MAX_HELD: usize = 16;

/// What the download thread reports, in archive order.
#[derive(Debug)]
enum Arrival {
    Toc(Toc),
    Start {
        id: i32,
        at: u64,
    },
    End {
        id: i32,
        end: u64,
    },
    /// Not an archive [`pg_archive`] reads, or damaged: the scanner stopped.
    Unreadable(ArchiveError),
}

impl From<Event> for Arrival {
    fn from(e: Event) -> Self {
        match e {
            Event::Toc(t) => Arrival::Toc(t),
            Event::BlockStart { dump_id, at } => Arrival::Start { id: dump_id, at },
            Event::BlockEnd { dump_id, end } => Arrival::End { id: dump_id, end },
        }
    }
}

/// What arrives before the pipeline can start: the TOC, or why there is none.
#[derive(Default)]
struct Head {
    toc: Option<Toc>,
    unreadable: Option<ArchiveError>,
    /// Block arrivals seen while waiting for the download to end.
    rest: Vec<Arrival>,
}

impl Head {
    fn known(&self) -> bool {
        self.toc.is_some() || self.unreadable.is_some()
    }

    fn arrived(&mut self, a: Arrival) {
        match a {
            Arrival::Toc(t) if self.toc.is_none() => self.toc = Some(t),
            Arrival::Unreadable(e) if !self.known() => self.unreadable = Some(e),
            other => self.rest.push(other),
        }
    }
}

/// The feed's sink: appends to the spool and scans what it appends.
struct SpoolSink {
    spool: Arc<Spool>,
    scanner: Option<Scanner>,
    tx: mpsc::UnboundedSender<Arrival>,
}

impl SpoolSink {
    /// Runs the scanner (while it still reads the archive), collecting its events.
    fn scan(
        &mut self,
        step: impl FnOnce(&mut Scanner, &mut dyn FnMut(Event)) -> Result<(), ArchiveError>,
        events: &mut Vec<Event>,
    ) {
        let Some(scanner) = &mut self.scanner else {
            return;
        };
        if let Err(e) = step(scanner, &mut |e| events.push(e)) {
            let _ = self.tx.send(Arrival::Unreadable(e));
            self.scanner = None;
        }
    }

    fn send(&self, events: Vec<Event>) {
        for e in events {
            // A scheduler that is gone has nothing left to learn.
            let _ = self.tx.send(e.into());
        }
    }

    /// The archive ended: the scanner's last events (ends learnt only now are marked here;
    /// no reader has their ranges yet, since their events were never sent).
    fn finish(&mut self) {
        let mut events = Vec::new();
        self.scan(|s, out| s.finish(&mut |e| out(e)), &mut events);
        for e in &events {
            if let Event::BlockEnd { dump_id, end } = e {
                self.spool.mark_end(*dump_id, *end);
            }
        }
        self.send(events);
    }
}

impl Write for SpoolSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let piece = &data[..data.len().min(read_path::FILE_WRITE)];
        // Scanned before it is appended: the ends of blocks within it are marked together
        // with its bytes, and the events go out once the bytes are there to read.
        let mut events = Vec::new();
        self.scan(|s, out| s.push(piece, &mut |e| out(e)), &mut events);
        let ends: Vec<(i32, u64)> = events
            .iter()
            .filter_map(|e| match e {
                Event::BlockEnd { dump_id, end } => Some((*dump_id, *end)),
                _ => None,
            })
            .collect();
        self.spool.append(piece, &ends)?;
        self.send(events);
        Ok(piece.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A data block waiting for a pg_restore.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Queued {
    id: i32,
    start: u64,
    /// `None` while it is still arriving.
    end: Option<u64>,
    since: Instant,
}

/// Blocks waiting for a pg_restore, in archive order. Only the last can still be arriving.
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Queued>,
}

impl Queue {
    fn started(&mut self, id: i32, at: u64, now: Instant) {
        self.items.push_back(Queued {
            id,
            start: at,
            end: None,
            since: now,
        });
    }

    /// Records a block's end if it is still queued (a streamed block is not).
    fn ended(&mut self, id: i32, end: u64) {
        if let Some(q) = self.items.iter_mut().find(|q| q.id == id) {
            q.end = Some(end);
        }
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The next batch for an idle pg_restore slot, sharing work among `free` slots (the caller
    /// passes N), if one is worth starting now:
    /// the largest complete big block alone; else a fair share of the complete small ones,
    /// once they are many, or have waited [`LINGER`], or nothing more will arrive (`flush`);
    /// else the block still arriving, once it is big or has waited.
    fn take(
        &mut self,
        written: u64,
        now: Instant,
        flush: bool,
        free: usize,
    ) -> Option<Vec<Queued>> {
        let size = |q: &Queued| q.end.map(|e| e - q.start);
        let largest = (0..self.items.len())
            .filter(|&i| size(&self.items[i]).is_some_and(|n| n >= BIG))
            .max_by_key(|&i| size(&self.items[i]));
        if let Some(i) = largest {
            return self.items.remove(i).map(|q| vec![q]);
        }
        let arriving = self.items.back().filter(|q| q.end.is_none());
        let arriving_due = arriving.is_some_and(|q| {
            written.saturating_sub(q.start) >= BIG || now.duration_since(q.since) >= LINGER
        });
        let small: Vec<usize> = (0..self.items.len())
            .filter(|&i| self.items[i].end.is_some())
            .collect();
        let small_bytes: u64 = small.iter().filter_map(|&i| size(&self.items[i])).sum();
        let waited = small
            .first()
            .is_some_and(|&i| now.duration_since(self.items[i].since) >= LINGER);
        let small_due = !small.is_empty()
            && (flush
                || waited
                || arriving_due
                || small.len() >= BATCH_ENTRIES
                || small_bytes >= BATCH_BYTES);
        if small_due {
            let share = small.len().div_ceil(free.max(1)).min(BATCH_ENTRIES);
            let (mut n, mut bytes) = (0, 0u64);
            while n < share && bytes < BATCH_BYTES {
                bytes += size(&self.items[small[n]]).unwrap_or(0);
                n += 1;
            }
            // Complete blocks come before the arriving one: the first n items are these.
            return Some(self.items.drain(..n).collect());
        }
        if arriving_due {
            return self.items.pop_back().map(|q| vec![q]);
        }
        None
    }
}

/// What went in so far, for the message when a restore stops midway.
#[derive(Debug, Default)]
struct Progress {
    pre_data: bool,
    /// The tables (and large-object sets) whose data committed, as the TOC names them.
    committed: Vec<String>,
    blocks: usize,
    /// Every table's data committed; what is left is post-data and privileges.
    post_data: bool,
    /// Post-data entries (indexes, constraints, ...) created, of how many.
    post_done: usize,
    post_total: usize,
    /// The object has a manifest: what committed was checked against its SHA-256 first.
    checked: bool,
}

/// Tables named in full in a partial-restore message; the rest are counted.
const NAMED: usize = 20;

impl Progress {
    fn describe(&self) -> String {
        if !self.pre_data {
            return "some definitions may have been created".into();
        }
        if self.post_data {
            return "definitions and data restored; indexes, constraints and privileges incomplete"
                .into();
        }
        let n = self.committed.len();
        if n == 0 {
            return "definitions created, no table data committed (table data commits only once the whole object matched its checksum), no indexes, constraints or privileges yet".into();
        }
        let mut names = self.committed[..n.min(NAMED)].join(", ");
        if n > NAMED {
            names.push_str(&format!(" and {} more", n - NAMED));
        }
        let verified = if self.checked {
            "each verified against the manifest's SHA-256 before it committed"
        } else {
            "no manifest: not verified"
        };
        let post = if self.post_done == 0 {
            "no indexes, constraints or privileges yet".to_string()
        } else {
            format!(
                "{} of {} indexes, constraints and other post-data entries of committed tables created, no privileges yet",
                self.post_done, self.post_total
            )
        };
        format!(
            "definitions created, data of {n} of {} tables and large-object sets committed ({verified}): {names}; {post}",
            self.blocks
        )
    }
}

/// Restores the archive at `key` into `target` with N parallel pg_restore processes while it
/// downloads. `preflight` must succeed before the target is touched; its result is returned.
#[allow(clippy::too_many_arguments)]
pub async fn restore<P, T>(
    storage: &Arc<dyn Storage>,
    key: &str,
    decode: Decode,
    expect: Option<Expect>,
    target: &PgTarget,
    opts: &RestoreOpts,
    preflight: P,
    cancel: &CancellationToken,
) -> anyhow::Result<(T, Fed)>
where
    P: std::future::Future<Output = anyhow::Result<T>>,
{
    let jobs = opts.jobs.unwrap_or(1).max(1) as usize;
    let verifiable = expect.is_some();
    let t0 = Instant::now();
    // The decoded dump is in clear here: the directory is private (see private_fs).
    let dir = crate::private_fs::PrivateDir::new("restore")
        .context("creating a temp directory for --jobs")?;
    let path = dir.path().join("archive.dump");
    let spool = Arc::new(Spool::create(&path).context("creating the spool file for --jobs")?);
    let (tx, mut arrivals) = mpsc::unbounded_channel();
    // Dropped on every way out: the download stops reading, and readers waiting on the spool
    // wake up (the runtime would otherwise wait for their threads at exit).
    let abandoned = read_path::Abandoned::default();
    let _closing = CloseOnDrop(spool.clone());
    let src = abandoned.reader(SyncIoBridge::new(storage.get(key).await?));
    let mut download = {
        let sink = SpoolSink {
            spool: spool.clone(),
            // `--clean` drops everything first, which only one whole pg_restore run can do.
            scanner: (!opts.clean).then(Scanner::new),
            tx,
        };
        tokio::task::spawn_blocking(move || {
            let mut sink = sink;
            let fed = read_path::feed(src, &decode, &mut sink, expect.as_ref(), Consumer::Strict);
            if fed.is_ok() {
                sink.finish();
            }
            sink.spool.close(match &fed {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            });
            fed
        })
    };

    // Until the TOC is in and the preflight passed, nothing touches the target.
    let mut preflight = std::pin::pin!(preflight);
    let (mut checked, mut fed) = (None, None);
    let mut head = Head::default();
    let mut closed = false;
    while checked.is_none() || (!head.known() && fed.is_none()) {
        tokio::select! {
            r = &mut preflight, if checked.is_none() => checked = Some(r?),
            a = arrivals.recv(), if !closed && !head.known() => match a {
                Some(a) => head.arrived(a),
                None => closed = true,
            },
            j = &mut download, if fed.is_none() => {
                fed = Some(j.context("download task panicked")??);
                // What the thread sent before it ended is all in the channel now.
                while let Ok(a) = arrivals.try_recv() {
                    head.arrived(a);
                }
            }
            _ = cancel.cancelled() => return Err(Interrupted.into()),
        }
    }
    let Head {
        toc,
        unreadable,
        rest: early,
    } = head;
    let checked = checked.expect("loop ends once the preflight passed");
    let toc = match (toc, unreadable) {
        (Some(t), _) => t,
        (None, why) => {
            // The whole file is needed now.
            spool.set_budget(None);
            if let Some(why) = why {
                tracing::info!(key, reason = %why, "restoring after the download (the archive cannot be split while it streams)");
            }
            let fed = match fed {
                Some(f) => f,
                None => tokio::select! {
                    j = &mut download => j.context("download task panicked")??,
                    _ = cancel.cancelled() => return Err(Interrupted.into()),
                },
            };
            let run = RestoreRun {
                label: "pg_restore",
                file: Some(&path),
                list: None,
            };
            run_phase(target, opts, run, cancel).await?;
            return Ok((checked, fed));
        }
    };

    let plan = Plan::of(&toc);
    // The head is never given back (every run reads it): the budget is for what follows.
    let budget = opts
        .spool_budget
        .unwrap_or_else(|| default_budget(dir.path()));
    tracing::debug!(budget, head = toc.data_start, "spool budget");
    spool.set_budget(Some(toc.data_start.saturating_add(budget)));
    let mut pipeline = Pipeline {
        target: target.clone(),
        opts: RestoreOpts {
            jobs: None,
            ..opts.clone()
        },
        spool: spool.clone(),
        path: path.clone(),
        dir: dir.path().to_path_buf(),
        head_len: toc.data_start,
        expected: plan.blocks.iter().copied().collect(),
        labels: {
            let blocks: HashSet<i32> = plan.blocks.iter().copied().collect();
            toc.entries
                .iter()
                .filter(|e| blocks.contains(&e.dump_id))
                .map(|e| (e.dump_id, e.label()))
                .collect()
        },
        seen: HashSet::new(),
        queue: Queue::default(),
        workers: JoinSet::new(),
        slots: jobs,
        batches: 0,
        progress: Progress {
            blocks: plan.blocks.len(),
            post_total: plan.post.len(),
            checked: verifiable,
            ..Progress::default()
        },
        held: mpsc::unbounded_channel(),
        holding: HashSet::new(),
        gone: HashSet::new(),
        max_live: jobs + MAX_HELD,
        jobs,
        lead_off: false,
        t0,
        committed: HashSet::new(),
        post_done: HashSet::new(),
        post_busy: HashSet::new(),
        wave: JoinSet::new(),
        running: std::collections::HashMap::new(),
        waves: 0,
    };
    let result = pipeline
        .run(
            &plan,
            &toc,
            early,
            &mut arrivals,
            &mut download,
            fed,
            cancel,
        )
        .await;
    match result {
        Ok(fed) => {
            tracing::debug!(
                at_ms = pipeline.ms(),
                waves = pipeline.waves,
                "post-data done"
            );
            if !plan.privileges.is_empty() {
                // One at a time, in archive order (see `Plan::privileges`).
                let list = dir.path().join("privileges.list");
                write_list(&list, &plan.privileges)?;
                let run = RestoreRun {
                    label: "pg_restore (privileges)",
                    file: Some(&path),
                    list: Some(&list),
                };
                let serial = RestoreOpts {
                    jobs: None,
                    ..opts.clone()
                };
                run_phase(target, &serial, run, cancel)
                    .await
                    .map_err(|e| pipeline.partial(e))?;
                tracing::debug!(at_ms = pipeline.ms(), "privileges done");
            }
            Ok((checked, fed))
        }
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            if pipeline.touched() {
                tracing::warn!("restore interrupted: {}", pipeline.partial_note());
            }
            Err(e)
        }
        Err(e) => Err(pipeline.partial(e)),
    }
}

/// The spool's budget without `--spool-budget`: half the space free for the temp directory,
/// which the restore's target (often on the same disk) and everything else there share.
/// Whatever the budget, nothing waits for ever: the download waits only for pg_restores that
/// are reading and giving back (see [`Pipeline::dispatch`] for when they cannot).
fn default_budget(dir: &Path) -> u64 {
    match crate::private_fs::free_bytes(dir) {
        Ok(free) => (free / 2).max(MIN_BUDGET),
        Err(e) => {
            tracing::debug!(error = %e, "free space unknown: the spool has no budget");
            u64::MAX
        }
    }
}

/// The smallest budget: a budget only slows the download, but below a few big blocks it
/// would make every table wait for the one before it.
const MIN_BUDGET: u64 = 64 << 20;

/// `--spool-budget`: bytes, or a number with KiB, MiB, GiB or TiB (KB, MB, GB, TB and K, M,
/// G, T are read the same, as powers of 1024).
pub fn parse_budget(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a size: use e.g. 2GiB or 500MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "\"{s}\" has an unknown unit: use KiB, MiB, GiB or TiB"
            ))
        }
    };
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("\"{s}\" is too large"))?;
    if bytes < MIN_BUDGET {
        return Err(format!(
            "\"{s}\" is below the minimum of {} MiB",
            MIN_BUDGET >> 20
        ));
    }
    Ok(bytes)
}

/// Closes the spool with an error when the restore ends for any reason, so no reader waits.
struct CloseOnDrop(Arc<Spool>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(Err("restore stopped".into()));
    }
}

pub(crate) fn write_list(path: &Path, ids: &[i32]) -> anyhow::Result<()> {
    crate::private_fs::create_file(path)
        .and_then(|mut f| f.write_all(pg_archive::list_file(ids).as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

pub(crate) async fn run_phase(
    target: &PgTarget,
    opts: &RestoreOpts,
    run: RestoreRun<'_>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let child = pg::spawn_restore(
        &target.tools,
        &target.conn,
        &target.database,
        opts,
        run,
        target.redactor.clone(),
    )?;
    tokio::select! {
        r = child.wait() => { r?; }
        // Dropping the wait future drops the child, which kills its process group.
        _ = cancel.cancelled() => return Err(Interrupted.into()),
    }
    Ok(())
}

struct Pipeline {
    target: PgTarget,
    /// Options for the single-transaction runs (phase 1 and the data batches).
    opts: RestoreOpts,
    spool: Arc<Spool>,
    /// The spool file: phase 1 reads its head.
    path: PathBuf,
    dir: PathBuf,
    head_len: u64,
    expected: HashSet<i32>,
    /// How the TOC names each data entry, for what-committed messages.
    labels: std::collections::HashMap<i32, String>,
    seen: HashSet<i32>,
    queue: Queue,
    workers: JoinSet<anyhow::Result<Done>>,
    slots: usize,
    batches: usize,
    progress: Progress,
    /// Workers report here (by batch number) when all they still have to feed is the
    /// withheld tail: their slot is free while they wait for the verdict.
    held: (mpsc::UnboundedSender<usize>, mpsc::UnboundedReceiver<usize>),
    /// Waiting for the verdict, slot already given back.
    holding: HashSet<usize>,
    /// Finished (slot given back) before their "held" report was seen.
    gone: HashSet<usize>,
    /// pg_restore processes alive at most: loading ones plus those waiting for the verdict.
    max_live: usize,
    /// N: pg_restore processes at work at once (data and post-data).
    jobs: usize,
    /// The download's limits were lifted (see [`Pipeline::dispatch`]).
    lead_off: bool,
    /// When the restore started: trace events say how far in they are.
    t0: Instant,
    /// Data blocks committed.
    committed: HashSet<i32>,
    /// Post-data entries restored, and those running post-data pg_restores restore.
    post_done: HashSet<i32>,
    post_busy: HashSet<i32>,
    /// Running post-data pg_restores (see [`Pipeline::start_wave`]), by number.
    wave: JoinSet<anyhow::Result<usize>>,
    running: std::collections::HashMap<usize, Wave>,
    waves: usize,
}

impl Pipeline {
    /// Milliseconds since the restore started, for the trace.
    fn ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn label(&self, id: i32) -> String {
        self.labels
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("entry {id}"))
    }

    /// What the target holds after a stop midway, and the ways out.
    fn partial_note(&self) -> String {
        format!(
            "database \"{}\" is partly restored ({}); drop and recreate it, or restore again with --clean",
            self.target.database,
            self.progress.describe()
        )
    }

    fn touched(&self) -> bool {
        self.progress.pre_data || self.batches > 0
    }

    fn partial(&self, e: anyhow::Error) -> anyhow::Error {
        if !self.touched() {
            return e;
        }
        e.context(format!("restore stopped: {}", self.partial_note()))
    }

    /// Phases 1 and 2: returns once every data block is restored and the download verified.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &mut self,
        plan: &Plan,
        toc: &Toc,
        early: Vec<Arrival>,
        arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
        download: &mut tokio::task::JoinHandle<Result<Fed, read_path::FeedError>>,
        mut fed: Option<Fed>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Fed> {
        let pre_list = self.dir.join("pre.list");
        write_list(&pre_list, &plan.pre)?;
        let spool_path = self.path.clone();
        let (target, opts, cancel_pre) = (self.target.clone(), self.opts.clone(), cancel.clone());
        let mut pre = std::pin::pin!(async move {
            let run = RestoreRun {
                label: "pg_restore (pre-data)",
                file: Some(&spool_path),
                list: Some(&pre_list),
            };
            run_phase(&target, &opts, run, &cancel_pre).await
        });
        for a in early {
            self.arrive(a, toc)?;
        }
        let mut tick = tokio::time::interval(TICK);
        let mut closed = false;
        loop {
            let now = Instant::now();
            if self.progress.pre_data {
                self.dispatch(now, fed.is_some());
            }
            let data_done = fed.is_some()
                && self.progress.pre_data
                && self.queue.is_empty()
                && self.workers.is_empty();
            if data_done && !self.progress.post_data {
                let missing: Vec<String> = toc
                    .entries
                    .iter()
                    .filter(|e| {
                        self.expected.contains(&e.dump_id) && !self.seen.contains(&e.dump_id)
                    })
                    .map(|e| e.label())
                    .collect();
                if !missing.is_empty() {
                    anyhow::bail!("the archive has no data for {}", missing.join(", "));
                }
                self.progress.post_data = true;
                tracing::info!(
                    blocks = plan.blocks.len(),
                    batches = self.batches,
                    "data restored; restoring post-data and privileges"
                );
            }
            // Post-data only once the whole object matched its checksum: what it builds then
            // comes from verified bytes, on data that committed after the same verdict.
            if fed.is_some() && self.progress.pre_data {
                while self.start_wave(plan, data_done, cancel)? {}
            }
            if data_done && self.running.is_empty() && self.post_done.len() >= plan.post.len() {
                return Ok(fed.take().expect("checked above"));
            }
            tokio::select! {
                r = &mut pre, if !self.progress.pre_data => {
                    r?;
                    self.progress.pre_data = true;
                    tracing::info!(entries = plan.pre.len(), "definitions restored (pre-data)");
                    tracing::debug!(at_ms = self.ms(), downloaded = self.spool.written(), "pre-data done");
                }
                a = arrivals.recv(), if !closed => match a {
                    Some(a) => self.arrive(a, toc)?,
                    None => closed = true,
                },
                j = &mut *download, if fed.is_none() => {
                    let f = j.context("download task panicked")??;
                    // What the thread sent before it ended is all in the channel now.
                    while let Ok(a) = arrivals.try_recv() {
                        self.arrive(a, toc)?;
                    }
                    let waits = self.spool.waits();
                    tracing::debug!(
                        at_ms = self.ms(),
                        bytes = f.raw_bytes,
                        waited_on_budget_ms = waits.budget.as_millis() as u64,
                        waited_on_pace_ms = waits.pace.as_millis() as u64,
                        spool_held = self.spool.held(),
                        passed_in_memory = self.spool.passed_in_memory(),
                        live = self.workers.len(),
                        queued = self.queue.items.len(),
                        "download verified"
                    );
                    fed = Some(f);
                }
                Some(done) = self.workers.join_next() => {
                    let done = done.context("restore worker panicked")??;
                    self.progress.committed.extend(done.labels);
                    self.committed.extend(done.ids);
                    if !self.holding.remove(&done.batch) {
                        self.slots += 1;
                        if done.held {
                            self.gone.insert(done.batch);
                        }
                    }
                }
                Some(w) = self.wave.join_next() => {
                    let n = w.context("post-data task panicked")??;
                    let w = self.running.remove(&n).expect("every wave is recorded");
                    for id in &w.entries {
                        self.post_busy.remove(id);
                    }
                    self.progress.post_done += w.entries.len();
                    self.post_done.extend(w.entries);
                    self.slots += w.slots;
                    tracing::debug!(at_ms = self.ms(), wave = n, "post-data pg_restore done");
                }
                Some(batch) = self.held.1.recv() => {
                    if !self.gone.remove(&batch) {
                        self.holding.insert(batch);
                        self.slots += 1;
                    }
                }
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return Err(Interrupted.into()),
            }
        }
    }

    fn arrive(&mut self, a: Arrival, toc: &Toc) -> anyhow::Result<()> {
        match a {
            Arrival::Toc(_) => {}
            Arrival::Unreadable(e) => {
                return Err(anyhow::Error::from(e).context("reading the archive as it streams"))
            }
            Arrival::Start { id, at } => {
                if !self.expected.contains(&id) || !self.seen.insert(id) {
                    let what = toc
                        .entries
                        .iter()
                        .find(|e| e.dump_id == id)
                        .map(|e| e.label())
                        .unwrap_or_else(|| format!("entry {id}"));
                    anyhow::bail!(
                        "damaged archive: an unexpected data block for {what} at byte {at}"
                    );
                }
                tracing::debug!(
                    at_ms = self.ms(),
                    block = id,
                    offset = at,
                    table = %self.label(id),
                    "block starts arriving"
                );
                self.queue.started(id, at, Instant::now());
                if self.seen.len() == self.expected.len() && !self.lead_off {
                    // The last table is arriving: running ahead of its own pg_restore serves
                    // nobody, so the download takes its pace (see crate::read_path::spool). Only this
                    // table's bytes count: earlier ones still loading from the spool must not
                    // hold it back.
                    self.spool.pace_from(Some((at, LAST_BLOCK_LEAD)));
                }
            }
            Arrival::End { id, end } => {
                tracing::debug!(
                    at_ms = self.ms(),
                    block = id,
                    end,
                    spool_held = self.spool.held(),
                    "block arrived"
                );
                self.queue.ended(id, end)
            }
        }
        Ok(())
    }

    /// Starts a pg_restore for the post-data entries that may run now ([`Plan::ready`]): a
    /// table's indexes and constraints as soon as its data committed, while other tables
    /// still load, as `pg_restore -j` does. Only after the verdict (the caller checks), so
    /// nothing it builds comes from bytes not verified, and only on data that committed,
    /// which no data could before that same verdict.
    ///
    /// Returns whether it started one. It takes the slots free now (`pg_restore -j k`; with one slot, one transaction). Its
    /// entries touch only tables whose data committed, which no data pg_restore holds, and
    /// none that a running post-data pg_restore touches: two pg_restores never wait for each
    /// other's locks, so they cannot deadlock. Within one, pg_restore keeps conflicting
    /// entries apart, as in a whole `pg_restore -j`. While blocks wait for a slot, data goes
    /// first.
    fn start_wave(
        &mut self,
        plan: &Plan,
        data_done: bool,
        cancel: &CancellationToken,
    ) -> anyhow::Result<bool> {
        if self.slots == 0 || (!data_done && !self.queue.is_empty()) {
            return Ok(false);
        }
        let busy_tables: HashSet<i32> = self
            .running
            .values()
            .flat_map(|w| w.tables.iter().copied())
            .collect();
        let mut ids = plan.ready(
            &self.committed,
            &self.post_done,
            &self.post_busy,
            &busy_tables,
        );
        if ids.is_empty() && data_done && self.running.is_empty() {
            // Every block committed, so everything left is ready; should a dependency say
            // otherwise, pg_restore orders what is left itself, as it always did.
            ids = plan
                .post
                .iter()
                .filter(|id| !self.post_done.contains(id))
                .copied()
                .collect();
        }
        if ids.is_empty() {
            return Ok(false);
        }
        // A share of what is ready, so that a slot freed later finds work too instead of
        // waiting for one long pg_restore; at least one table's entries together.
        let share = (ids.len() + self.post_busy.len()).div_ceil(self.jobs);
        let ids = share_of(plan, &ids, share, &self.post_done);
        let k = self.slots.min(ids.len().div_ceil(share));
        self.slots -= k;
        self.waves += 1;
        let n = self.waves;
        let list = self.dir.join(format!("post-{n}.list"));
        write_list(&list, &ids)?;
        tracing::debug!(
            at_ms = self.ms(),
            wave = n,
            entries = ids.len(),
            jobs = k,
            data_done,
            "post-data pg_restore starts"
        );
        self.post_busy.extend(ids.iter().copied());
        let tables = ids
            .iter()
            .filter_map(|id| plan.needs.get(id))
            .flat_map(|x| x.blocks.iter().copied())
            .collect();
        self.running.insert(
            n,
            Wave {
                entries: ids,
                slots: k,
                tables,
            },
        );
        let (target, path, cancel) = (self.target.clone(), self.path.clone(), cancel.clone());
        let opts = RestoreOpts {
            jobs: Some(k as u32),
            ..self.opts.clone()
        };
        self.wave.spawn(crate::cleanup::tracked(async move {
            let run = RestoreRun {
                label: "pg_restore (post-data)",
                file: Some(&path),
                list: Some(&list),
            };
            run_phase(&target, &opts, run, &cancel).await.map(|()| n)
        }));
        Ok(true)
    }

    fn dispatch(&mut self, now: Instant, flush: bool) {
        if self.workers.len() >= self.max_live && !self.queue.is_empty() && !self.lead_off {
            // Blocks wait for a pg_restore that only the verdict frees: the download must not
            // wait for them (see Spool::set_budget): the rest goes to disk, however much.
            tracing::debug!(
                at_ms = self.ms(),
                live = self.workers.len(),
                "every pg_restore slot waits for the verdict: the spool's limits are lifted"
            );
            self.spool.pace_from(None);
            self.spool.set_budget(None);
            self.lead_off = true;
        }
        while self.slots > 0 && self.workers.len() < self.max_live {
            let Some(batch) = self
                .queue
                // A share of all N, not of the slots free now: a batch taken while another
                // slot is busy must leave work for that slot once it frees (one batch of
                // every small table left ran alone for seconds in the 200-table trace).
                .take(self.spool.written(), now, flush, self.jobs)
            else {
                return;
            };
            self.slots -= 1;
            self.batches += 1;
            let streaming = batch.last().is_some_and(|q| q.end.is_none());
            // The last table arriving, and its pg_restore starting now: nothing else will read
            // its bytes, so they go from the download to it through memory, not the spool file.
            let direct = streaming
                && self.seen.len() == self.expected.len()
                && batch
                    .last()
                    .is_some_and(|q| self.spool.direct(q.id, DIRECT_LEAD));
            let complete: u64 = batch
                .iter()
                .filter_map(|q| q.end.map(|e| e - q.start))
                .sum();
            tracing::info!(
                entries = batch.len(),
                complete_bytes = complete,
                streaming,
                direct,
                "restoring data"
            );
            let worker = Worker {
                target: self.target.clone(),
                opts: self.opts.clone(),
                spool: self.spool.clone(),
                head_len: self.head_len,
                list: self.dir.join(format!("data-{}.list", self.batches)),
                blocks: batch.iter().map(|q| (q.id, q.start)).collect(),
                labels: batch
                    .iter()
                    .map(|q| {
                        self.labels
                            .get(&q.id)
                            .cloned()
                            .unwrap_or_else(|| format!("entry {}", q.id))
                    })
                    .collect(),
                batch: self.batches,
                held: self.held.0.clone(),
                t0: self.t0,
            };
            tracing::debug!(
                at_ms = self.ms(),
                batch = self.batches,
                first = %worker.labels.first().map(String::as_str).unwrap_or(""),
                entries = worker.labels.len(),
                streaming,
                downloaded = self.spool.written(),
                spool_held = self.spool.held(),
                live = self.workers.len() + 1,
                "data pg_restore starts"
            );
            self.workers.spawn(crate::cleanup::tracked(worker.run()));
        }
    }
}

/// One pg_restore for a batch of data blocks, fed the archive's head and those blocks on
/// stdin (its own `--use-list` names them in the same order, so it never needs to seek),
/// all but the last [`HOLD_BACK`] bytes, which wait for the whole object's verdict.
struct Worker {
    target: PgTarget,
    opts: RestoreOpts,
    spool: Arc<Spool>,
    head_len: u64,
    list: PathBuf,
    blocks: Vec<(i32, u64)>,
    labels: Vec<String>,
    /// This batch's number, for its "held" report.
    batch: usize,
    held: mpsc::UnboundedSender<usize>,
    /// When the restore started, for the trace.
    t0: Instant,
}

/// The first entries of `ready` (whole tables at a time: every entry touching the same
/// tables) up to about `share` of them, and none whose post-data dependencies are neither
/// `done` nor among those taken: a pg_restore of them needs nothing still to come. In
/// `ready`'s order.
fn share_of(plan: &Plan, ready: &[i32], share: usize, done: &HashSet<i32>) -> Vec<i32> {
    let tables = |id: &i32| {
        plan.needs
            .get(id)
            .map(|n| n.blocks.clone())
            .unwrap_or_default()
    };
    let mut groups: Vec<(Vec<i32>, Vec<i32>)> = Vec::new();
    for id in ready {
        let t = tables(id);
        match groups.iter_mut().find(|g| g.0 == t) {
            Some(g) => g.1.push(*id),
            None => groups.push((t, vec![*id])),
        }
    }
    let mut taken: Vec<i32> = Vec::new();
    for (_, group) in groups {
        if taken.len() >= share {
            break;
        }
        let within: HashSet<i32> = taken.iter().chain(&group).copied().collect();
        let closed = group.iter().all(|id| {
            plan.needs.get(id).is_none_or(|n| {
                n.post
                    .iter()
                    .all(|d| done.contains(d) || within.contains(d))
            })
        });
        if closed {
            taken.extend(group);
        }
    }
    if taken.is_empty() {
        // Only if dependencies run against archive order: the whole ready set is closed.
        return ready.to_vec();
    }
    // In archive order, which pg_dump made follow the dependencies: a serial pg_restore
    // runs its list in the list's order.
    let taken: HashSet<i32> = taken.into_iter().collect();
    ready
        .iter()
        .filter(|id| taken.contains(id))
        .copied()
        .collect()
}

/// A running post-data pg_restore.
struct Wave {
    entries: Vec<i32>,
    slots: usize,
    /// The data blocks (tables) its entries touch.
    tables: HashSet<i32>,
}

/// A batch committed.
struct Done {
    batch: usize,
    /// The data blocks it committed.
    ids: Vec<i32>,
    labels: Vec<String>,
    /// It reported waiting for the verdict (its slot was given back then).
    held: bool,
}

/// Passes everything on but the last [`HOLD_BACK`] bytes; errors at once when the inner
/// writer fails (pg_restore exited), so a feeder never reads on for nobody.
struct Tail<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Tail<W> {
    fn release(mut self) -> io::Result<W> {
        self.inner.write_all(&self.buf)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Tail<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let out = (self.buf.len() + data.len()).saturating_sub(HOLD_BACK);
        if out <= self.buf.len() {
            self.inner.write_all(&self.buf[..out])?;
            self.buf.drain(..out);
            self.buf.extend_from_slice(data);
        } else {
            // Most of `data` goes straight on, not through the buffer.
            let direct = out - self.buf.len();
            self.inner.write_all(&self.buf)?;
            self.inner.write_all(&data[..direct])?;
            self.buf.clear();
            self.buf.extend_from_slice(&data[direct..]);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Worker {
    /// Returns the tables it committed, once the object was verified.
    async fn run(self) -> anyhow::Result<Done> {
        let ids: Vec<i32> = self.blocks.iter().map(|b| b.0).collect();
        write_list(&self.list, &ids)?;
        let label = format!("pg_restore (data, {} entries)", ids.len());
        let mut child = pg::spawn_restore(
            &self.target.tools,
            &self.target.conn,
            &self.target.database,
            &self.opts,
            RestoreRun {
                label: &label,
                file: None,
                list: Some(&self.list),
            },
            self.target.redactor.clone(),
        )?;
        let stdin = child.take_stdin_file().context("pg_restore has no stdin")?;
        let (spool, head_len, blocks) = (self.spool, self.head_len, self.blocks);
        let (held, batch, t0) = (self.held, self.batch, self.t0);
        let feeder = tokio::task::spawn_blocking(move || {
            let mut out = Tail {
                inner: stdin,
                buf: Vec::with_capacity(HOLD_BACK),
            };
            let fed = (|| -> io::Result<()> {
                // The head is every run's; a block is this run's alone, given back as it goes.
                spool.copy_to(0, End::At(head_len), &mut out, false)?;
                for (id, start) in blocks {
                    spool.copy_to(start, End::Mark(id), &mut out, true)?;
                }
                Ok(())
            })();
            if let Err(e) = fed {
                // The pipe goes back with the error: pg_restore must be stopped before it
                // sees the end of its input.
                return (Err(e), Some(out.inner), false);
            }
            tracing::debug!(
                at_ms = t0.elapsed().as_millis() as u64,
                batch,
                "data pg_restore fed all but its withheld tail; waits for the verdict"
            );
            let _ = held.send(batch);
            match spool.wait_closed() {
                Ok(()) => match out.release() {
                    Ok(stdin) => {
                        drop(stdin);
                        (Ok(()), None, true)
                    }
                    Err(e) => (Err(e), None, true),
                },
                Err(e) => (Err(e), Some(out.inner), true),
            }
        });
        let (fed, stdin, reported) = feeder.await.context("restore feeder panicked")?;
        match fed {
            Ok(()) => {
                child.wait().await?;
            }
            // pg_restore stopped reading: its exit status and stderr are the real cause.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                drop(stdin);
                child.wait().await?;
                return Err(anyhow::Error::from(e).context(label));
            }
            // The download failed (the spool's reason says why): nothing of this batch may
            // commit, so pg_restore is stopped while its input is still open.
            Err(e) => {
                let _ = child.terminate().await;
                drop(stdin);
                return Err(anyhow::Error::from(e).context(label));
            }
        }
        tracing::debug!(
            at_ms = t0.elapsed().as_millis() as u64,
            batch,
            "data pg_restore committed"
        );
        Ok(Done {
            batch,
            ids,
            labels: self.labels,
            held: reported,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(q: &Option<Vec<Queued>>) -> Vec<i32> {
        q.as_ref()
            .map(|b| b.iter().map(|x| x.id).collect())
            .unwrap_or_default()
    }

    /// Blocks `(id, size)` back to back from offset 0, all complete.
    fn complete(sizes: &[(i32, u64)], t: Instant) -> Queue {
        let mut q = Queue::default();
        let mut at = 0;
        for &(id, n) in sizes {
            q.started(id, at, t);
            at += n;
            q.ended(id, at);
        }
        q
    }

    #[test]
    fn small_blocks_wait_to_share_a_pg_restore() {
        let t0 = Instant::now();
        let mut q = complete(&[(1, 100), (2, 100)], t0);
        // Young and small: wait for more.
        assert_eq!(q.take(200, t0, false, 2), None);
        // Waited long enough: both together, though two slots are free (too small to split).
        assert_eq!(queued(&q.take(200, t0 + LINGER, false, 1)), [1, 2]);
        assert!(q.is_empty());
        // Nothing more will arrive: go now.
        let mut q = complete(&[(3, 100)], t0);
        assert_eq!(queued(&q.take(100, t0, true, 1)), [3]);
    }

    #[test]
    fn ready_work_is_shared_among_free_slots_largest_first() {
        let t0 = Instant::now();
        let mut q = complete(
            &[(1, 10), (2, BIG), (3, 10), (4, 2 * BIG), (5, 10), (6, 10)],
            t0,
        );
        assert_eq!(queued(&q.take(0, t0, true, 3)), [4], "the largest first");
        assert_eq!(queued(&q.take(0, t0, true, 2)), [2]);
        assert_eq!(
            queued(&q.take(0, t0, true, 2)),
            [1, 3],
            "half of the small ones"
        );
        assert_eq!(queued(&q.take(0, t0, true, 1)), [5, 6]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_big_block_streams_while_it_arrives() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.started(1, 10, t0);
        assert_eq!(q.take(10 + BIG - 1, t0, false, 2), None);
        let b = q.take(10 + BIG, t0, false, 2).unwrap();
        assert_eq!(b.iter().map(|x| x.id).collect::<Vec<_>>(), [1]);
        assert_eq!(b[0].end, None, "streamed: its end is not known yet");
        // Its end, reported later, finds nothing queued.
        q.ended(1, 99);
        assert!(q.is_empty());
        // Small complete blocks before an arriving big one go first, then the big one.
        let mut q = complete(&[(1, 10)], t0);
        q.started(2, 10, t0);
        assert_eq!(queued(&q.take(10 + BIG, t0, false, 2)), [1]);
        assert_eq!(queued(&q.take(10 + BIG, t0, false, 1)), [2]);
    }

    #[test]
    fn batches_are_cut_at_the_limits() {
        let t0 = Instant::now();
        let sizes: Vec<(i32, u64)> = (0..(BATCH_ENTRIES as i32 + 5)).map(|i| (i, 10)).collect();
        let mut q = complete(&sizes, t0);
        assert_eq!(q.take(0, t0, false, 1).unwrap().len(), BATCH_ENTRIES);
        assert_eq!(q.take(0, t0, false, 1), None, "the rest is small and young");
        assert_eq!(q.take(0, t0, true, 1).unwrap().len(), 5);
        let sizes: Vec<(i32, u64)> = (0..40).map(|i| (i, BIG / 2)).collect();
        let mut q = complete(&sizes, t0);
        let first = q.take(0, t0, false, 1).unwrap();
        assert_eq!(first.len() as u64, BATCH_BYTES / (BIG / 2));
    }

    /// Post-data work is cut in shares of whole tables, each needing nothing outside it that
    /// is not done, so a later free slot finds work of its own.
    #[test]
    fn post_data_is_shared_by_whole_tables() {
        use crate::source::pg_archive::Needs;
        // Tables (blocks) 1 and 2: keys 11, 12, indexes 21, 22, and a foreign key 31 on table
        // 2 referencing table 1's key.
        let needs = |blocks: &[i32], post: &[i32]| Needs {
            blocks: blocks.to_vec(),
            post: post.to_vec(),
        };
        let plan = Plan {
            post: vec![11, 12, 21, 22, 31],
            needs: [
                (11, needs(&[1], &[])),
                (12, needs(&[2], &[])),
                (21, needs(&[1], &[])),
                (22, needs(&[2], &[])),
                (31, needs(&[1, 2], &[11])),
            ]
            .into_iter()
            .collect(),
            ..Plan::default()
        };
        let none = HashSet::new();
        let ready = [11, 12, 21, 22, 31];
        assert_eq!(share_of(&plan, &ready, 2, &none), [11, 21], "table 1 whole");
        assert_eq!(share_of(&plan, &ready, 3, &none), [11, 12, 21, 22]);
        // The foreign key goes with its key, or once the key is done.
        assert_eq!(share_of(&plan, &ready, 5, &none), ready);
        assert_eq!(
            share_of(&plan, &[31], 1, &none),
            [31],
            "nothing else is ready"
        );
        let done: HashSet<i32> = [11].into_iter().collect();
        assert_eq!(share_of(&plan, &[12, 31], 1, &done), [12]);
        assert_eq!(share_of(&plan, &[31, 12], 1, &done), [31]);
    }

    #[test]
    fn the_tail_withholds_exactly_the_last_bytes() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        for piece in [1, 1000, HOLD_BACK, 300_000] {
            let mut t = Tail {
                inner: Vec::new(),
                buf: Vec::new(),
            };
            for c in data.chunks(piece) {
                t.write_all(c).unwrap();
                assert_eq!(t.buf.len(), HOLD_BACK.min(t.inner.len() + t.buf.len()));
            }
            assert_eq!(
                t.inner,
                &data[..data.len() - HOLD_BACK],
                "pieces of {piece}"
            );
            assert_eq!(t.release().unwrap(), data);
        }
    }

    #[test]
    fn spool_budgets_read_as_sizes() {
        assert_eq!(parse_budget("2GiB"), Ok(2 << 30));
        assert_eq!(parse_budget("500 MiB"), Ok(500 << 20));
        assert_eq!(parse_budget("1t"), Ok(1 << 40));
        assert_eq!(parse_budget(&(MIN_BUDGET).to_string()), Ok(MIN_BUDGET));
        for bad in ["", "lots", "2 GB/s", "-1GiB", "1MiB", "99999999999TiB"] {
            assert!(parse_budget(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn progress_says_what_is_in_the_target() {
        let mut p = Progress {
            pre_data: true,
            committed: vec![],
            blocks: 5,
            post_data: false,
            post_done: 0,
            post_total: 9,
            checked: true,
        };
        assert!(
            p.describe().contains("no table data committed"),
            "{}",
            p.describe()
        );
        p.committed = vec!["TABLE DATA public a".into(), "TABLE DATA public b".into()];
        let d = p.describe();
        assert!(d.contains("data of 2 of 5"), "{d}");
        assert!(
            d.contains("each verified against the manifest's SHA-256"),
            "{d}"
        );
        assert!(d.ends_with("TABLE DATA public a, TABLE DATA public b; no indexes, constraints or privileges yet"), "{d}");
        // Indexes of committed tables, built while others loaded.
        p.post_done = 3;
        let d = p.describe();
        assert!(
            d.ends_with("; 3 of 9 indexes, constraints and other post-data entries of committed tables created, no privileges yet"),
            "{d}"
        );
        p.post_data = true;
        assert!(
            p.describe().contains("privileges incomplete"),
            "{}",
            p.describe()
        );
    }
}
