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
//! How long the writer waited on each limit is kept ([`Spool::waits`]), for the trace.

use std::collections::HashMap;
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
        paced.then_some(Limit::Pace)
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
        let at = {
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
            s.written
        };
        self.file.write_all_at(data, at)?;
        let mut s = self.lock();
        s.written = at + data.len() as u64;
        s.ends.extend(ends.iter().copied());
        drop(s);
        self.changed.notify_all();
        Ok(())
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
        self.lock().ends.insert(id, end);
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

    /// `None` when `pos` is the range's end; else how far a reader at `pos` may read now.
    fn available(&self, pos: u64, end: End) -> io::Result<Option<Available>> {
        let s = self.lock();
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
        if s.written > pos {
            // Without a known end every written byte is the range's: the writer marks an end
            // together with the bytes that pass it.
            return Ok(Some(Available::Upto(
                end_at.unwrap_or(s.written).min(s.written),
            )));
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
