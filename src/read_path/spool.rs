//! A file one writer appends to while readers follow behind it, each at its own pace.
//!
//! `restore --jobs` downloads the archive once, and several pg_restore processes read their
//! parts of it as it arrives: one streams a big table while the download runs ahead to the
//! next tables for the others. Memory cannot hold what runs ahead (a whole table), so it goes
//! to a private file; readers wait for bytes that are not there yet instead of seeing an end.
//!
//! The writer also marks where named ranges end (a data block's last byte), so a reader can
//! follow a range whose end is not known when it starts.
//!
//! Bytes a reader has consumed for good are given back ([`Spool::copy_to`] with `release`):
//! their pages are punched out of the file, so the file holds only what is downloaded and not
//! yet restored. Two limits can make the writer wait for readers:
//!
//! - a **budget** ([`Spool::set_budget`]): at most this many bytes held that readers have not
//!   given back, so the spool never outgrows the disk it was sized for;
//! - a **pace** ([`Spool::pace_from`]): when running ahead can serve nobody (the last table is
//!   arriving and only its own reader will read what comes), the writer stays at most a few
//!   MiB ahead of what was given back *from that offset on*. Bytes of earlier tables that
//!   other readers are still loading do not count: a pace counting them made the last table's
//!   download, and so its pg_restore, wait until the table before it had nearly finished
//!   loading, which serialised two big tables (issue 34). The download then runs at the
//!   restore's pace through a few MiB of page cache, instead of writing the rest of the table
//!   to disk first. New page cache is not free: on this project's VMs, memory touched for the
//!   first time costs up to ~3 s per GB.
//!
//! The last table needs no file at all ([`Spool::direct`]): once its reader is running, and
//! nothing but that reader will ever read its bytes, the writer hands its pieces to the reader
//! through a few MiB of memory instead of writing them to the file and the reader reading them
//! back (issue 34: with one big table, that round trip through new page cache was what
//! `restore --jobs` paid over the streaming restore).
//!
//! How long the writer waited on each limit is kept ([`Spool::waits`]), for the trace.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How much a reader copies per step.
const READ_PIECE: usize = 256 << 10;
/// How often a releasing reader gives back what it copied.
const RELEASE_EVERY: u64 = 4 << 20;

pub struct Spool {
    file: File,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    written: u64,
    /// Bytes given back by readers (punched out of the file).
    released: u64,
    /// The writer waits while this many written bytes are not given back.
    budget: Option<u64>,
    /// See [`Spool::pace_from`].
    pace: Option<Pace>,
    /// Bytes given back at or after the pace's offset.
    released_paced: u64,
    waits: Waits,
    ends: HashMap<i32, u64>,
    /// `Some` once the writer is done: `Err` carries why it stopped early.
    closed: Option<Result<(), String>>,
    /// See [`Spool::direct`].
    direct: Option<Direct>,
}

/// A range whose bytes go from the writer to its one reader through memory.
struct Direct {
    id: i32,
    /// Bytes from here on, up to the range's end, are kept in `ring`, never in the file.
    from: u64,
    /// The range's end, once the writer passed it: later bytes go to the file again.
    end: Option<u64>,
    /// Pieces appended and not yet taken, with their offsets, in order.
    ring: VecDeque<(u64, Vec<u8>)>,
    ring_bytes: u64,
    /// The writer waits while the ring holds this many bytes.
    cap: u64,
    /// Taken pieces' buffers, for the writer to fill again (no new memory per piece).
    free: Vec<Vec<u8>>,
    /// Bytes that went through the ring.
    passed: u64,
}

impl Direct {
    /// Whether bytes at `pos` are the ring's.
    fn covers(&self, pos: u64) -> bool {
        pos >= self.from && self.end.is_none_or(|e| pos < e)
    }
}

#[derive(Debug, Clone, Copy)]
struct Pace {
    from: u64,
    lead: u64,
}

/// How long the writer waited on each limit, in total.
#[derive(Debug, Clone, Copy, Default)]
pub struct Waits {
    pub budget: Duration,
    pub pace: Duration,
}

impl State {
    /// Which limit the writer must wait on now, if any.
    fn limited(&self) -> Option<Limit> {
        if self
            .budget
            .is_some_and(|b| self.written - self.released >= b)
        {
            return Some(Limit::Budget);
        }
        let paced = self.pace.is_some_and(|p| {
            let ahead = self.written.saturating_sub(p.from);
            ahead.saturating_sub(self.released_paced) >= p.lead
        });
        let full = self
            .direct
            .as_ref()
            .is_some_and(|d| d.end.is_none() && d.ring_bytes >= d.cap);
        (paced || full).then_some(Limit::Pace)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Budget,
    Pace,
}

/// Where a reader stops.
#[derive(Debug, Clone, Copy)]
pub enum End {
    At(u64),
    /// Where the writer marks range `id` to end, once it knows.
    Mark(i32),
}

impl Spool {
    /// Creates the file at `path` (0600, which must not exist yet) in the caller's private
    /// directory.
    pub fn create(path: &Path) -> io::Result<Spool> {
        Ok(Spool {
            file: crate::private_fs::create_file(path)?,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes appended so far.
    pub fn written(&self) -> u64 {
        self.lock().written
    }

    /// Appends `data` (the writer is the only one who calls this), first waiting while the
    /// lead limit says readers are too far behind. `ends` are the ranges that end within
    /// `data`: they are marked together with it, so no reader of such a range ever reads past
    /// its end.
    pub fn append(&self, data: &[u8], ends: &[(i32, u64)]) -> io::Result<()> {
        let (at, mut piece) = {
            let mut s = self.lock();
            while let Some(limit) = s.limited() {
                if let Some(Err(why)) = &s.closed {
                    return Err(io::Error::other(why.clone()));
                }
                let since = Instant::now();
                s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
                let waited = since.elapsed();
                match limit {
                    Limit::Budget => s.waits.budget += waited,
                    Limit::Pace => s.waits.pace += waited,
                }
            }
            let at = s.written;
            // A direct range's bytes go to memory, up to its end if that is within `data`.
            let piece = s.direct.as_mut().filter(|d| d.end.is_none()).map(|d| {
                let end = ends.iter().find(|e| e.0 == d.id).map(|e| e.1);
                let n = end.map_or(data.len(), |e| {
                    (e.saturating_sub(at) as usize).min(data.len())
                });
                (n, d.free.pop().unwrap_or_default())
            });
            (at, piece)
        };
        let in_memory = piece.as_ref().map_or(0, |p| p.0);
        if let Some((n, buf)) = &mut piece {
            buf.clear();
            buf.extend_from_slice(&data[..*n]);
        }
        if in_memory < data.len() {
            self.file
                .write_all_at(&data[in_memory..], at + in_memory as u64)?;
        }
        let mut s = self.lock();
        s.written = at + data.len() as u64;
        s.ends.extend(ends.iter().copied());
        if let Some(d) = &mut s.direct {
            if piece.is_none() && d.end.is_none() {
                // Made direct while these bytes were on their way to the file: the ring
                // starts after them.
                d.from = d.from.max(at + data.len() as u64);
            }
            if let Some((n, buf)) = piece.filter(|p| p.0 > 0) {
                d.ring.push_back((at, buf));
                d.ring_bytes += n as u64;
                d.passed += n as u64;
            }
            if d.end.is_none() {
                d.end = ends.iter().find(|e| e.0 == d.id).map(|e| e.1);
            }
        }
        drop(s);
        self.changed.notify_all();
        Ok(())
    }

    /// From now on the bytes of range `id` go from the writer to its reader through at most
    /// `cap` bytes of memory, never through the file (bytes already written stay there and
    /// are read from it first). Only for a range that one reader, already running, reads
    /// with `release` and that nothing will read again: the last table arriving, whose
    /// pg_restore is started (`restore --jobs`). Like a pace, the writer then waits for that
    /// reader. Returns whether it took effect: not for a range already complete, nor twice.
    pub fn direct(&self, id: i32, cap: u64) -> bool {
        let mut s = self.lock();
        if s.ends.contains_key(&id) || s.direct.is_some() || s.closed.is_some() {
            return false;
        }
        s.direct = Some(Direct {
            id,
            from: s.written,
            end: None,
            ring: VecDeque::new(),
            ring_bytes: 0,
            cap,
            free: Vec::new(),
            passed: 0,
        });
        true
    }

    /// Bytes that went from the writer to a reader through memory (see [`Spool::direct`]).
    pub fn passed_in_memory(&self) -> u64 {
        self.lock().direct.as_ref().map_or(0, |d| d.passed)
    }

    /// From now on the writer holds at most `budget` bytes that readers have not given back
    /// (`None`: no limit). Only safe while every byte held has a reader that gives back what
    /// it reads, or will have one without the writer's help.
    pub fn set_budget(&self, budget: Option<u64>) {
        self.lock().budget = budget;
        self.changed.notify_all();
    }

    /// From now on the writer stays at most `lead` bytes ahead of what readers gave back of
    /// the bytes from `from` on (`None`: no pace). Bytes before `from` do not count. The same
    /// rule as [`Spool::set_budget`]: the range from `from` on must have, or get without the
    /// writer's help, a reader that gives back what it reads.
    pub fn pace_from(&self, pace: Option<(u64, u64)>) {
        let mut s = self.lock();
        s.pace = pace.map(|(from, lead)| Pace { from, lead });
        s.released_paced = 0;
        drop(s);
        self.changed.notify_all();
    }

    /// How long the writer has waited on each limit so far.
    pub fn waits(&self) -> Waits {
        self.lock().waits
    }

    /// Bytes written and not given back.
    pub fn held(&self) -> u64 {
        let s = self.lock();
        s.written - s.released
    }

    /// Punches `[start, end)` out of the file (whole pages inside it); no reader may need it.
    fn release(&self, start: u64, end: u64) {
        crate::private_fs::punch(&self.file, start, end);
        let mut s = self.lock();
        s.released += end - start;
        if s.pace.is_some_and(|p| start >= p.from) {
            s.released_paced += end - start;
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Range `id` ends at `end` (exclusive), for ranges whose end was learnt after their bytes
    /// were appended; no reader may have read past `end` (none was given the range yet).
    pub fn mark_end(&self, id: i32, end: u64) {
        let mut s = self.lock();
        s.ends.insert(id, end);
        if let Some(d) = s.direct.as_mut().filter(|d| d.id == id && d.end.is_none()) {
            d.end = Some(end);
        }
        drop(s);
        self.changed.notify_all();
    }

    /// No more bytes will come. `Err` wakes every reader with that reason.
    pub fn close(&self, outcome: Result<(), String>) {
        let mut s = self.lock();
        if s.closed.is_none() {
            s.closed = Some(outcome);
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Waits until the writer is done: `Ok` once it closed the spool with success (for
    /// `restore --jobs`: every byte arrived and the object matched its checksum), else why not.
    pub fn wait_closed(&self) -> io::Result<()> {
        let mut s = self.lock();
        loop {
            match &s.closed {
                Some(Ok(())) => return Ok(()),
                Some(Err(why)) => return Err(io::Error::other(why.clone())),
                None => s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// Copies `[start, end)` into `out`, waiting for bytes the writer has not appended yet.
    /// Fails if the writer stops first, or stops early. With `release`, the bytes are given
    /// back as they are copied (this reader is the only one that will ever read them), at the
    /// latest whenever the reader waits, so a lead limit can never wait on it.
    pub fn copy_to(
        &self,
        start: u64,
        end: End,
        out: &mut impl Write,
        release: bool,
    ) -> io::Result<u64> {
        let mut buf = vec![0u8; READ_PIECE];
        let mut pos = start;
        let mut kept = start;
        loop {
            if release && pos - kept >= RELEASE_EVERY {
                self.release(kept, pos);
                kept = pos;
            }
            let upto = match self.available(pos, end)? {
                Some(upto) => upto,
                None => {
                    if release && pos > kept {
                        self.release(kept, pos);
                    }
                    return Ok(pos - start);
                }
            };
            let upto = match upto {
                Available::Upto(u) => u,
                Available::Piece(piece) => {
                    out.write_all(&piece)?;
                    pos += piece.len() as u64;
                    self.recycle(piece);
                    continue;
                }
                Available::Wait => {
                    if release && pos > kept {
                        self.release(kept, pos);
                        kept = pos;
                    }
                    self.wait_past(pos, end);
                    continue;
                }
            };
            let n = ((upto - pos) as usize).min(READ_PIECE);
            let got = self.file.read_at(&mut buf[..n], pos)?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "spool file shorter than written",
                ));
            }
            out.write_all(&buf[..got])?;
            pos += got as u64;
        }
    }

    /// `None` when `pos` is the range's end; else how far a reader at `pos` may read now, or
    /// the next piece of a direct range (taken out of the ring: the reader is its only one).
    fn available(&self, pos: u64, end: End) -> io::Result<Option<Available>> {
        let mut s = self.lock();
        let end_at = match end {
            End::At(e) => Some(e),
            End::Mark(id) => s.ends.get(&id).copied(),
        };
        match end_at {
            Some(e) if e == pos => return Ok(None),
            Some(e) if e < pos => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("range ends at {e}, before {pos}"),
                ))
            }
            _ => {}
        }
        let mut upto = s.written;
        if let Some(d) = &mut s.direct {
            if d.covers(pos) {
                if !matches!(end, End::Mark(id) if id == d.id) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a range passed in memory has one reader only",
                    ));
                }
                if let Some((at, piece)) = d.ring.pop_front() {
                    if at != pos {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "a range passed in memory read at {pos}, its next piece is at {at}"
                            ),
                        ));
                    }
                    d.ring_bytes -= piece.len() as u64;
                    drop(s);
                    self.changed.notify_all();
                    return Ok(Some(Available::Piece(piece)));
                }
                // Taken to the last byte written: wait for more (or the writer's end).
                upto = pos;
            } else if pos < d.from {
                upto = upto.min(d.from);
            }
        }
        if upto > pos {
            // Without a known end every written byte is the range's: the writer marks an end
            // together with the bytes that pass it.
            return Ok(Some(Available::Upto(end_at.unwrap_or(upto).min(upto))));
        }
        match &s.closed {
            Some(Err(why)) => Err(io::Error::other(why.clone())),
            Some(Ok(())) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ended before this part of it",
            )),
            None => Ok(Some(Available::Wait)),
        }
    }

    /// A taken piece's buffer goes back to the writer.
    fn recycle(&self, piece: Vec<u8>) {
        if let Some(d) = &mut self.lock().direct {
            // Enough for the ring's worth of pieces; beyond that, memory goes back.
            if (d.free.len() as u64) * (piece.capacity().max(1) as u64) < d.cap {
                d.free.push(piece);
            }
        }
    }

    /// Waits until something changes for a reader at `pos`.
    fn wait_past(&self, pos: u64, end: End) {
        let mut s = self.lock();
        loop {
            let marked = matches!(end, End::Mark(id) if s.ends.contains_key(&id));
            if s.written > pos || s.closed.is_some() || marked {
                return;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

enum Available {
    Upto(u64),
    Piece(Vec<u8>),
    Wait,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_reader_follows_the_writer_to_a_mark() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::create(&dir.path().join("s")).unwrap());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let reader = {
            let spool = spool.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let n = spool.copy_to(1000, End::Mark(7), &mut out, false).unwrap();
                (n, out)
            })
        };
        let mut at = 0u64;
        for piece in data.chunks(100_000) {
            let next = at + piece.len() as u64;
            let ends = if (at..next).contains(&2_500_000) {
                vec![(7, 2_500_000)]
            } else {
                vec![]
            };
            spool.append(piece, &ends).unwrap();
            at = next;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let (n, out) = reader.join().unwrap();
        assert_eq!(n, 2_499_000);
        assert_eq!(out, &data[1000..2_500_000]);
        let mut all = Vec::new();
        spool
            .copy_to(0, End::At(data.len() as u64), &mut all, false)
            .unwrap();
        assert_eq!(all, data);
    }

    #[test]
    fn readers_waiting_on_a_writer_that_fails_get_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::create(&dir.path().join("s")).unwrap());
        spool.append(b"abc", &[]).unwrap();
        let reader = {
            let spool = spool.clone();
            std::thread::spawn(move || spool.copy_to(0, End::Mark(1), &mut Vec::new(), false))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        spool.close(Err("checksum mismatch".into()));
        let err = reader.join().unwrap().unwrap_err();
        assert_eq!(err.to_string(), "checksum mismatch");
        // A range that the finished archive never completes is an error, not a short copy.
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(&dir.path().join("s")).unwrap();
        spool.append(b"abc", &[]).unwrap();
        spool.close(Ok(()));
        let err = spool
            .copy_to(0, End::At(10), &mut Vec::new(), false)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Appends `data` on a thread of its own in 128 KiB pieces, the last one marking `mark`
    /// at `base + data.len()`; returns the most the spool held after an append.
    fn write_in_pieces(
        spool: &Arc<Spool>,
        data: &[u8],
        base: u64,
        mark: i32,
    ) -> std::thread::JoinHandle<u64> {
        let (spool, data) = (spool.clone(), data.to_vec());
        std::thread::spawn(move || {
            let mut most = 0;
            let pieces: Vec<&[u8]> = data.chunks(128 << 10).collect();
            for (i, piece) in pieces.iter().enumerate() {
                let ends = if i + 1 == pieces.len() {
                    vec![(mark, base + data.len() as u64)]
                } else {
                    vec![]
                };
                spool.append(piece, &ends).unwrap();
                most = most.max(spool.held());
            }
            most
        })
    }

    #[test]
    fn a_lead_limit_paces_the_writer_to_a_releasing_reader() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::create(&dir.path().join("s")).unwrap());
        spool.pace_from(Some((0, 1 << 20)));
        let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 249) as u8).collect();
        let writer = write_in_pieces(&spool, &data, 0, 1);
        let mut out = Vec::new();
        spool.copy_to(0, End::Mark(1), &mut out, true).unwrap();
        let most = writer.join().unwrap();
        assert_eq!(out, data);
        // Never more than the limit plus one append ahead.
        assert!(most <= (1 << 20) + (128 << 10), "{most}");
        // Given back: the file's blocks are (nearly) all holes.
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(dir.path().join("s")).unwrap().blocks() * 512;
        assert!(allocated < 8 << 20, "{allocated} bytes still on disk");
    }

    /// Issue 34: the pace for the last table counts only that table's bytes. A table before it
    /// still waiting in the spool (its pg_restore loading it, slowly) must not hold the
    /// download back, or the last table's pg_restore waits for the one before it.
    #[test]
    fn a_pace_ignores_the_backlog_of_earlier_tables() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::create(&dir.path().join("s")).unwrap());
        // 8 MiB of an earlier table that no one reads yet.
        spool.append(&vec![1u8; 8 << 20], &[(1, 8 << 20)]).unwrap();
        spool.pace_from(Some((8 << 20, 1 << 20)));
        let last: Vec<u8> = (0..6_000_000u32).map(|i| (i % 241) as u8).collect();
        let writer = write_in_pieces(&spool, &last, 8 << 20, 2);
        let mut out = Vec::new();
        spool
            .copy_to(8 << 20, End::Mark(2), &mut out, true)
            .unwrap();
        writer.join().unwrap();
        assert_eq!(out, last);
        // The earlier table is all still there for its reader.
        let mut first = Vec::new();
        spool.copy_to(0, End::Mark(1), &mut first, true).unwrap();
        assert_eq!(first.len(), 8 << 20);
    }

    /// Issue 34: the last range's bytes go to its reader through memory, never the file; what
    /// was written before it became direct is read from the file first, and bytes after the
    /// range's end go to the file again.
    #[test]
    fn a_direct_range_passes_through_memory_only() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::create(&dir.path().join("s")).unwrap());
        let head: Vec<u8> = (0..300_000u32).map(|i| (i % 7) as u8).collect();
        spool.append(&head, &[]).unwrap();
        // Range 2 starts at 100_000; 200_000 of its bytes are in the file already.
        assert!(spool.direct(2, 1 << 20));
        assert!(!spool.direct(2, 1 << 20), "once only");
        let rest: Vec<u8> = (0..20_000_000u32).map(|i| (i % 241) as u8).collect();
        let end = head.len() as u64 + rest.len() as u64 - 1000;
        let reader = {
            let spool = spool.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                spool
                    .copy_to(100_000, End::Mark(2), &mut out, true)
                    .unwrap();
                out
            })
        };
        let mut at = head.len() as u64;
        let mut most = 0;
        for piece in rest.chunks(128 << 10) {
            let next = at + piece.len() as u64;
            let ends = if (at..next).contains(&end) {
                vec![(2, end)]
            } else {
                vec![]
            };
            spool.append(piece, &ends).unwrap();
            most = most.max(spool.lock().direct.as_ref().unwrap().ring_bytes);
            at = next;
        }
        spool.close(Ok(()));
        let out = reader.join().unwrap();
        let mut all = head.clone();
        all.extend_from_slice(&rest);
        assert_eq!(out, &all[100_000..end as usize]);
        assert!(most <= (1 << 20) + (128 << 10), "{most}");
        assert_eq!(spool.passed_in_memory(), end - head.len() as u64);
        // The file never held the range's later bytes: what is after its end is there, at its
        // offset, and nothing before that but the head.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir.path().join("s")).unwrap();
        assert_eq!(meta.len(), all.len() as u64);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "{} bytes on disk",
            meta.blocks() * 512
        );
        let mut tail = Vec::new();
        spool
            .copy_to(end, End::At(all.len() as u64), &mut tail, false)
            .unwrap();
        assert_eq!(tail, &all[end as usize..]);
        // A complete range cannot become direct.
        let spool = Spool::create(&dir.path().join("t")).unwrap();
        spool.append(b"abc", &[(1, 3)]).unwrap();
        assert!(!spool.direct(1, 1 << 20));
    }

    /// A writer waiting on a full ring whose reader is gone stops with the reason.
    #[test]
    fn a_writer_waiting_for_a_direct_reader_stops_when_the_spool_closes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::create(&dir.path().join("s")).unwrap());
        assert!(spool.direct(1, 256 << 10));
        let writer = {
            let spool = spool.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    spool.append(&[0u8; 128 << 10], &[])?;
                }
                Ok::<_, io::Error>(())
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        spool.close(Err("restore stopped".into()));
        let err = writer.join().unwrap().unwrap_err();
        assert_eq!(err.to_string(), "restore stopped");
    }

    /// A budget bounds what the spool holds: the writer waits for readers to give back.
    #[test]
    fn a_budget_bounds_what_the_spool_holds() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::create(&dir.path().join("s")).unwrap());
        spool.set_budget(Some(2 << 20));
        let data: Vec<u8> = (0..12_000_000u32).map(|i| (i % 239) as u8).collect();
        let writer = write_in_pieces(&spool, &data, 0, 1);
        let mut out = Vec::new();
        spool.copy_to(0, End::Mark(1), &mut out, true).unwrap();
        let most = writer.join().unwrap();
        assert_eq!(out, data);
        assert!(most <= (2 << 20) + (128 << 10), "{most}");
    }
}
