//! Following a directory-format dump while pg_dump writes it: which files appear and when each
//! is closed (inotify), and a reader per file that waits for the file to grow and gives its
//! consumed bytes back to the disk (hole punching), so the spool stays bounded by how far the
//! upload lags, not by the size of the database.
//!
//! Completeness never comes from here alone: a file is whole when pg_dump closed it (timely) or
//! when pg_dump exited 0 (the anchor: see `commands::backup::dir`).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// What the watch saw in the dump directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirEvent {
    Created(String),
    /// Closed after writing: pg_dump opens each file once, so it is complete (if pg_dump ends
    /// well).
    Closed(String),
    /// The kernel dropped events: the directory must be read again, and closes are known only
    /// once pg_dump exited.
    Overflow,
}

/// Watches one directory from a thread until dropped (or [`DirWatch::finish`]).
pub struct DirWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DirWatch {
    /// Starts watching `dir` for created and closed-after-writing files. Events from before
    /// this call are not reported: start it before the writer.
    pub fn start(dir: &Path) -> io::Result<(DirWatch, UnboundedReceiver<DirEvent>)> {
        // SAFETY: inotify_init1 takes flags only; the fd is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own from here on.
        let fd: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: a valid C string and our inotify fd.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_CREATE | libc::IN_CLOSE_WRITE,
            )
        };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        let (tx, rx) = unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("backhaul-dirwatch".into())
                .spawn(move || watch(fd, &stop, &tx))?
        };
        Ok((
            DirWatch {
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// Stops after reading what the kernel already queued; the receiver then ends.
    pub fn finish(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn watch(fd: std::os::fd::OwnedFd, stop: &AtomicBool, tx: &UnboundedSender<DirEvent>) {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Read once more after `stop`: what was queued before it still counts.
        let stopping = stop.load(Ordering::SeqCst);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        unsafe { libc::poll(&mut pfd, 1, if stopping { 0 } else { 100 }) };
        loop {
            // SAFETY: reading into our buffer, within its length.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            for ev in parse_events(&buf[..n as usize]) {
                if tx.send(ev).is_err() {
                    return;
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// Decodes a buffer of `struct inotify_event`s.
fn parse_events(mut b: &[u8]) -> Vec<DirEvent> {
    const HEAD: usize = std::mem::size_of::<libc::inotify_event>();
    let mut out = Vec::new();
    while b.len() >= HEAD {
        // SAFETY: at least HEAD bytes; read_unaligned copes with any alignment.
        let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) };
        let end = (HEAD + ev.len as usize).min(b.len());
        let name = &b[HEAD..end];
        let name = String::from_utf8_lossy(name.split(|c| *c == 0).next().unwrap_or(&[]));
        if ev.mask & libc::IN_Q_OVERFLOW != 0 {
            out.push(DirEvent::Overflow);
        } else if ev.mask & libc::IN_ISDIR != 0 || name.is_empty() {
        } else if ev.mask & libc::IN_CREATE != 0 {
            out.push(DirEvent::Created(name.into_owned()));
        } else if ev.mask & libc::IN_CLOSE_WRITE != 0 {
            out.push(DirEvent::Closed(name.into_owned()));
        }
        b = &b[end..];
    }
    out
}

/// What every reader of one dump shares.
#[derive(Debug, Default)]
pub struct Follow {
    /// The run failed: readers stop waiting and fail.
    pub stop: AtomicBool,
    /// pg_dump exited 0: every file is complete as it is.
    pub dump_done: AtomicBool,
    /// Bytes read by all readers so far: the budget's deadlock guard watches it move.
    pub consumed: AtomicU64,
}

/// Punched every this many bytes read.
const PUNCH_EVERY: u64 = 4 << 20;

/// Reads a file that is still being written: at its current end it waits for more until the
/// writer closed it ([`FollowReader::closed`]) or the whole dump ended; what it read is
/// punched out of the file, and the file is removed at its end.
pub struct FollowReader {
    file: File,
    path: PathBuf,
    pos: u64,
    punched: u64,
    closed: Arc<AtomicBool>,
    follow: Arc<Follow>,
}

impl FollowReader {
    pub fn new(file: File, path: PathBuf, closed: Arc<AtomicBool>, follow: Arc<Follow>) -> Self {
        FollowReader {
            file,
            path,
            pos: 0,
            punched: 0,
            closed,
            follow,
        }
    }

    fn complete(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || self.follow.dump_done.load(Ordering::SeqCst)
    }
}

impl Read for FollowReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut nap = Duration::from_millis(5);
        loop {
            if self.follow.stop.load(Ordering::SeqCst) {
                return Err(io::Error::other("the dump was stopped"));
            }
            // Known complete *before* the read: a read that then finds nothing is the end.
            let complete = self.complete();
            let n = self.file.read_at(buf, self.pos)?;
            if n > 0 {
                self.pos += n as u64;
                self.follow.consumed.fetch_add(n as u64, Ordering::Relaxed);
                if self.pos - self.punched >= PUNCH_EVERY {
                    crate::private_fs::punch(&self.file, self.punched, self.pos);
                    self.punched = self.pos / 4096 * 4096;
                }
                return Ok(n);
            }
            if complete || buf.is_empty() {
                crate::private_fs::punch(&self.file, self.punched, self.pos);
                let _ = std::fs::remove_file(&self.path);
                return Ok(0);
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(40));
        }
    }
}

/// Opens a dump file to follow: for writing too, which hole punching needs.
pub fn open_rw(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

/// Bytes the files in `dir` take on disk (allocated blocks: punched holes do not count).
pub fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn follows_a_growing_file_and_gives_its_disk_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("3051.dat");
        let (watch, mut events) = DirWatch::start(dir.path()).unwrap();
        let mut w = std::fs::File::create(&path).unwrap();
        let closed = Arc::new(AtomicBool::new(false));
        let follow = Arc::new(Follow::default());
        let reader = FollowReader::new(
            open_rw(&path).unwrap(),
            path.clone(),
            closed.clone(),
            follow.clone(),
        );
        let data: Vec<u8> = (0..24_000_000u32).map(|i| (i % 253) as u8).collect();
        let expected = data.clone();
        let writer = {
            let closed = closed.clone();
            std::thread::spawn(move || {
                for chunk in data.chunks(1 << 20) {
                    w.write_all(chunk).unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                }
                drop(w);
                closed.store(true, Ordering::SeqCst);
            })
        };
        // Read two thirds while the writer goes on; what was read is no longer on disk.
        let mut reader = reader;
        let mut got = vec![0u8; 16_000_000];
        reader.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        let blocks = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            blocks <= 24_000_000 - (4 << 20),
            "{blocks} bytes still allocated, {} punched",
            reader.punched
        );
        reader.read_to_end(&mut got).unwrap();
        assert!(got == expected, "bytes differ");
        assert!(!path.exists(), "removed at its end");
        assert_eq!(follow.consumed.load(Ordering::SeqCst), 24_000_000);
        watch.finish();
        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push(e);
        }
        assert_eq!(
            seen,
            vec![
                DirEvent::Created("3051.dat".into()),
                DirEvent::Closed("3051.dat".into())
            ]
        );
    }

    #[test]
    fn a_stopped_dump_fails_a_waiting_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let follow = Arc::new(Follow::default());
        let mut r = FollowReader::new(
            File::open(&path).unwrap(),
            path.clone(),
            Arc::new(AtomicBool::new(false)),
            follow.clone(),
        );
        let stopper = {
            let follow = follow.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                follow.stop.store(true, Ordering::SeqCst);
            })
        };
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert_eq!(out, b"abc");
        stopper.join().unwrap();
        // Once the dump is known complete, an open file ends where it is.
        let follow = Arc::new(Follow::default());
        follow.dump_done.store(true, Ordering::SeqCst);
        let mut r = FollowReader::new(
            File::open(&path).unwrap(),
            path,
            Arc::new(AtomicBool::new(false)),
            follow,
        );
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
    }
}
