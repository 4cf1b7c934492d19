//! A file one writer appends to while readers follow behind it, each at its own pace.
//!
//! `restore --jobs` downloads the archive once, and several pg_restore processes read their
//! parts of it as it arrives: one streams a big table while the download runs ahead to the
//! next tables for the others. Memory cannot hold what runs ahead (a whole table), so it goes
//! to a private file; readers wait for bytes that are not there yet instead of seeing an end.
//!
//! The writer also marks where named ranges end (a data block's last byte), so a reader can
//! follow a range whose end is not known when it starts.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

/// How much a reader copies per step.
const READ_PIECE: usize = 256 << 10;

pub struct Spool {
    file: File,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    written: u64,
    ends: HashMap<i32, u64>,
    /// `Some` once the writer is done: `Err` carries why it stopped early.
    closed: Option<Result<(), String>>,
}

/// Where a reader stops.
#[derive(Debug, Clone, Copy)]
pub enum End {
    At(u64),
    /// Where the writer marks range `id` to end, once it knows.
    Mark(i32),
}

impl Spool {
    /// Creates (truncates) the file at `path`; the caller chooses a private directory.
    pub fn create(path: &Path) -> io::Result<Spool> {
        Ok(Spool {
            file: File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?,
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

    /// Appends `data` (the writer is the only one who calls this).
    pub fn append(&self, data: &[u8]) -> io::Result<()> {
        let at = self.lock().written;
        self.file.write_all_at(data, at)?;
        self.lock().written = at + data.len() as u64;
        self.changed.notify_all();
        Ok(())
    }

    /// Range `id` ends at `end` (exclusive); bytes up to `end` must already be appended.
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

    /// Copies `[start, end)` into `out`, waiting for bytes the writer has not appended yet.
    /// Fails if the writer stops first, or stops early.
    pub fn copy_to(&self, start: u64, end: End, out: &mut impl Write) -> io::Result<u64> {
        let mut buf = vec![0u8; READ_PIECE];
        let mut pos = start;
        loop {
            let upto = {
                let mut s = self.lock();
                loop {
                    let end_at = match end {
                        End::At(e) => Some(e),
                        End::Mark(id) => s.ends.get(&id).copied(),
                    };
                    match end_at {
                        Some(e) if e == pos => return Ok(pos - start),
                        Some(e) if e < pos => {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidInput,
                                format!("range ends at {e}, before {pos}"),
                            ))
                        }
                        _ => {}
                    }
                    if s.written > pos {
                        break end_at.unwrap_or(s.written).min(s.written);
                    }
                    match &s.closed {
                        Some(Err(why)) => return Err(io::Error::other(why.clone())),
                        Some(Ok(())) => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the archive ended before this part of it",
                            ))
                        }
                        None => {}
                    }
                    s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
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
                let n = spool.copy_to(1000, End::Mark(7), &mut out).unwrap();
                (n, out)
            })
        };
        for piece in data.chunks(100_000) {
            spool.append(piece).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        spool.mark_end(7, 2_500_000);
        let (n, out) = reader.join().unwrap();
        assert_eq!(n, 2_499_000);
        assert_eq!(out, &data[1000..2_500_000]);
        let mut all = Vec::new();
        spool
            .copy_to(0, End::At(data.len() as u64), &mut all)
            .unwrap();
        assert_eq!(all, data);
    }

    #[test]
    fn readers_waiting_on_a_writer_that_fails_get_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::create(&dir.path().join("s")).unwrap());
        spool.append(b"abc").unwrap();
        let reader = {
            let spool = spool.clone();
            std::thread::spawn(move || spool.copy_to(0, End::Mark(1), &mut Vec::new()))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        spool.close(Err("checksum mismatch".into()));
        let err = reader.join().unwrap().unwrap_err();
        assert_eq!(err.to_string(), "checksum mismatch");
        // A range that the finished archive never completes is an error, not a short copy.
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(&dir.path().join("s")).unwrap();
        spool.append(b"abc").unwrap();
        spool.close(Ok(()));
        let err = spool.copy_to(0, End::At(10), &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
