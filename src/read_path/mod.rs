//! The read side of the data path: stored object → SHA-256 + byte count → [decrypt] →
//! decompress → a consumer (pg_restore's stdin, a temp file, `pg_restore --list`).
//!
//! The last [`HOLD_BACK`] bytes of decoded output are withheld until the whole object
//! has been read and matched against its manifest. pg_restore runs in one transaction and
//! cannot reach its COMMIT without them, so a corrupted object is stopped before anything is
//! committed, however large it is and however late the corruption sits.
//!
//! The stages are readers pulled from the end (age only decrypts as a reader); a tap at the
//! bottom hashes every byte taken from storage, and whatever the decoders leave unread is
//! drained through the hash afterwards, so the checksum always covers the whole object.
//!
//! Runs on a blocking thread: hashing, decryption and decompression are CPU-bound.

pub mod spool;

use std::io::{self, Read, Write};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::crypto::{self, DecryptError, Identities};

/// Withheld tail. Bigger than any single pg_restore read at the end of an archive, small
/// enough to be irrelevant for memory.
pub const HOLD_BACK: usize = 64 << 10;
const READ_BUF: usize = 1 << 20;

/// How the stored object is encoded: optionally age-encrypted, then optionally zstd.
#[derive(Clone, Default)]
pub struct Decode {
    /// Decrypt with these identities first. `None` reads the stored bytes as they are.
    pub decrypt: Option<Arc<Identities>>,
    pub zstd: bool,
}

impl Decode {
    /// Stored bytes as they are.
    pub fn identity() -> Decode {
        Decode::default()
    }

    /// By extension: our zstd artifacts end in `.zst` (before any `.age`); pg's own
    /// compression is inside the archive and pg_restore handles it. An encrypted artifact
    /// needs `identities`; without them it is an error naming `--identity`.
    pub fn for_artifact(
        key: &str,
        extension: &str,
        identities: Option<&Arc<Identities>>,
    ) -> Result<Decode, crate::config::ConfigError> {
        let decrypt = if crypto::is_encrypted(extension) {
            Some(
                identities
                    .cloned()
                    .ok_or_else(|| crypto::missing_identity(key))?,
            )
        } else {
            None
        };
        Ok(Decode {
            decrypt,
            zstd: crypto::inner_extension(extension).ends_with(".zst"),
        })
    }
}

/// What the manifest promises about the stored object.
#[derive(Debug, Clone)]
pub struct Expect {
    pub sha256: String,
    pub size: u64,
}

/// Whether the consumer must take every byte (a restore) or may stop early (`pg_restore
/// --list` exits after the table of contents; the rest is still hashed and decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    Strict,
    MayStopEarly,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fed {
    pub sha256: String,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("checksum mismatch: expected {expected}, got {got}")]
    Checksum { expected: String, got: String },
    #[error("size mismatch: manifest says {expected} bytes, object has {got}")]
    Size { expected: u64, got: u64 },
    #[error("reading the stored object: {0}")]
    Read(io::Error),
    #[error("decompressing: {0}")]
    Decode(io::Error),
    /// The artifact is encrypted to keys we were not given (reported before reading it all).
    #[error(transparent)]
    NoIdentity(DecryptError),
    /// The consumer stopped taking input (pg_restore exited); its own error says why.
    #[error("writing to the restore tool: {0}")]
    Sink(io::Error),
}

/// Keeps the last [`HOLD_BACK`] bytes until [`HoldBack::release`]; everything before them
/// passes straight through. After the inner writer fails, further output is discarded (and
/// the error kept) so the caller can still finish hashing and report the most meaningful error.
struct HoldBack<W: Write> {
    inner: W,
    buf: Vec<u8>,
    raw: u64,
    error: Option<io::Error>,
}

impl<W: Write> HoldBack<W> {
    fn new(inner: W) -> Self {
        HoldBack {
            inner,
            buf: Vec::with_capacity(HOLD_BACK),
            raw: 0,
            error: None,
        }
    }

    fn emit(inner: &mut W, error: &mut Option<io::Error>, data: &[u8]) {
        if error.is_none() && !data.is_empty() {
            if let Err(e) = inner.write_all(data) {
                *error = Some(e);
            }
        }
    }

    fn release(mut self) -> Result<u64, io::Error> {
        Self::emit(&mut self.inner, &mut self.error, &self.buf);
        if self.error.is_none() {
            if let Err(e) = self.inner.flush() {
                self.error = Some(e);
            }
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.raw),
        }
    }
}

impl<W: Write> Write for HoldBack<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.raw += data.len() as u64;
        let total = self.buf.len() + data.len();
        if total > HOLD_BACK {
            // Pass on the oldest bytes beyond the withheld tail: first the held ones, then
            // the new ones, without copying the bulk into the hold.
            let out = total - HOLD_BACK;
            let from_buf = out.min(self.buf.len());
            Self::emit(&mut self.inner, &mut self.error, &self.buf[..from_buf]);
            self.buf.drain(..from_buf);
            let from_data = out - from_buf;
            Self::emit(&mut self.inner, &mut self.error, &data[..from_data]);
            self.buf.extend_from_slice(&data[from_data..]);
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hashes and counts every byte read from storage.
struct Tap<'a, R: Read> {
    inner: &'a mut R,
    hasher: &'a mut Sha256,
    stored: &'a mut u64,
}

impl<R: Read> Read for Tap<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        *self.stored += n as u64;
        Ok(n)
    }
}

/// A read error from storage, kept apart from decoding errors (which may just be damage).
struct ReadFailed(io::Error);

/// A file written in 128 KiB pieces, for decoded archives on local disk (`--jobs`, MongoDB).
/// coreutils' choice, and here more than habit: writing aligned 1 MiB pieces lets the kernel
/// back the page cache with 1 MiB folios, and on this project's VMs (free high-order memory
/// goes back to the host) that measured up to ten times slower: 1.2 GB in 2-3.4 s against
/// 0.25 s. A `BufWriter` would pass such large writes straight through.
pub struct FileSink(pub std::fs::File);

/// Bytes per write for [`FileSink`].
pub const FILE_WRITE: usize = 128 << 10;

impl Write for FileSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.write(&data[..data.len().min(FILE_WRITE)])
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Set when a feed's caller stopped waiting for it (the preflight beside a download failed, the
/// restore was interrupted). The blocking thread doing the work cannot be cancelled, and the
/// runtime waits for it at exit: without this it would read the rest of the object first,
/// however large.
#[derive(Default)]
pub struct Abandoned(Arc<std::sync::atomic::AtomicBool>);

impl Abandoned {
    pub fn reader<R: std::io::Read>(&self, inner: R) -> UnlessAbandoned<R> {
        UnlessAbandoned {
            inner,
            abandoned: self.0.clone(),
        }
    }
}

impl Abandoned {
    /// The flag, for a thread that opens several sources one after another.
    pub fn watch(&self) -> AbandonWatch {
        AbandonWatch(self.0.clone())
    }
}

/// A view of [`Abandoned`]'s flag that does not set it when dropped.
#[derive(Clone)]
pub struct AbandonWatch(Arc<std::sync::atomic::AtomicBool>);

impl AbandonWatch {
    pub fn reader<R: std::io::Read>(&self, inner: R) -> UnlessAbandoned<R> {
        UnlessAbandoned {
            inner,
            abandoned: self.0.clone(),
        }
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A source that fails once its download was abandoned, which ends the feed at once.
pub struct UnlessAbandoned<R> {
    inner: R,
    abandoned: Arc<std::sync::atomic::AtomicBool>,
}

impl<R: std::io::Read> std::io::Read for UnlessAbandoned<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.abandoned.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("download abandoned"));
        }
        self.inner.read(buf)
    }
}

/// Runs the decoding chain over `tap` into `hold`. Errors: `Ok(Err(..))` is a decoding
/// problem (possibly damage: the checksum decides), `Err` ends the feed at once.
fn decode_into<R: Read, W: Write>(
    tap: Tap<'_, R>,
    decode: &Decode,
    hold: &mut HoldBack<W>,
) -> Result<Result<(), FeedError>, ReadFailed> {
    let errors = ErrorSlot::default();
    let tap = Watched {
        inner: tap,
        slot: &errors,
    };
    let plain: Box<dyn Read + '_> = match &decode.decrypt {
        None => Box::new(tap),
        Some(ids) => match ids.decrypt(tap) {
            Ok(r) => Box::new(r),
            Err(e) => return errors.take().map(|_| Err(decrypt_error(e))),
        },
    };
    let mut plain: Box<dyn Read + '_> = if decode.zstd {
        match zstd::stream::read::Decoder::new(plain) {
            Ok(d) => Box::new(d),
            Err(e) => return errors.take().map(|_| Err(FeedError::Decode(e))),
        }
    } else {
        plain
    };
    let copied = crate::write_path::copy_counting(&mut plain, hold);
    drop(plain);
    errors
        .take()
        .map(|_| copied.map(|_| ()).map_err(FeedError::Decode))
}

/// A wrong key stops the feed at once (no point reading gigabytes to say so); a damaged
/// header is a decoding error, judged by the checksum.
fn decrypt_error(e: DecryptError) -> FeedError {
    match e {
        DecryptError::NoMatch => FeedError::NoIdentity(e),
        DecryptError::Format(msg) => FeedError::Decode(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("decrypting: {msg}"),
        )),
    }
}

/// Remembers a storage read error that the decoders above would otherwise disguise.
#[derive(Default)]
struct ErrorSlot(std::cell::Cell<Option<io::Error>>);

impl ErrorSlot {
    fn take(&self) -> Result<(), ReadFailed> {
        match self.0.take() {
            Some(e) => Err(ReadFailed(e)),
            None => Ok(()),
        }
    }
}

struct Watched<'s, T: Read> {
    inner: T,
    slot: &'s ErrorSlot,
}

impl<T: Read> Read for Watched<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let shown = io::Error::new(e.kind(), e.to_string());
                    self.slot.0.set(Some(e));
                    return Err(shown);
                }
                ok => return ok,
            }
        }
    }
}

/// Hashes what the decoders did not read (trailing bytes, or everything after damage).
fn drain<R: Read>(src: &mut R, hasher: &mut Sha256, stored: &mut u64) -> Result<(), FeedError> {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FeedError::Read(e)),
        };
        hasher.update(&buf[..n]);
        *stored += n as u64;
    }
}

/// Streams `src` through the checks into `sink`. On any failure the withheld tail is never
/// written; the caller then kills the consumer rather than closing its input normally.
pub fn feed<W: Write>(
    mut src: impl Read,
    decode: &Decode,
    sink: W,
    expect: Option<&Expect>,
    consumer: Consumer,
) -> Result<Fed, FeedError> {
    let mut hold = HoldBack::new(sink);
    let mut hasher = Sha256::new();
    let mut stored = 0u64;
    let tap = Tap {
        inner: &mut src,
        hasher: &mut hasher,
        stored: &mut stored,
    };
    // After a decode error keep hashing: a damaged object should be reported as a
    // checksum mismatch, which names the cause, not as a codec error.
    let decoded =
        decode_into(tap, decode, &mut hold).map_err(|ReadFailed(e)| FeedError::Read(e))?;
    if let Err(e @ FeedError::NoIdentity(_)) = decoded {
        return Err(e);
    }
    drain(&mut src, &mut hasher, &mut stored)?;
    let sha256 = hex::encode(hasher.finalize());
    if let Some(x) = expect {
        if !x.sha256.eq_ignore_ascii_case(&sha256) {
            return Err(FeedError::Checksum {
                expected: x.sha256.clone(),
                got: sha256,
            });
        }
        if x.size != stored {
            return Err(FeedError::Size {
                expected: x.size,
                got: stored,
            });
        }
    }
    decoded?;
    let raw = hold.raw;
    match hold.release() {
        Ok(_) => {}
        Err(_) if consumer == Consumer::MayStopEarly => {}
        Err(e) => return Err(FeedError::Sink(e)),
    }
    Ok(Fed {
        sha256,
        stored_bytes: stored,
        raw_bytes: raw,
    })
}

/// Decodes `src` into `sink` until the sink stops taking input or `limit` decoded bytes have
/// gone in, without any checks: for reading an archive's table of contents, which sits at its
/// head, without downloading the rest. Returns the decoded bytes written.
pub fn feed_head<W: Write>(
    src: impl Read,
    decode: &Decode,
    mut sink: W,
    limit: u64,
) -> io::Result<u64> {
    let plain: Box<dyn Read + '_> = match &decode.decrypt {
        None => Box::new(src),
        Some(ids) => Box::new(
            ids.decrypt(src)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
        ),
    };
    let mut plain: Box<dyn Read + '_> = if decode.zstd {
        Box::new(zstd::stream::read::Decoder::new(plain)?)
    } else {
        plain
    };
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    while sent < limit {
        let n = match plain.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        match sink.write_all(&buf[..n]) {
            Ok(()) => sent += n as u64,
            // The consumer read what it needed and exited.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect_of(b: &[u8]) -> Expect {
        Expect {
            sha256: hex::encode(Sha256::digest(b)),
            size: b.len() as u64,
        }
    }

    #[test]
    fn zstd_round_trip_passes_everything() {
        let raw: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
        let stored = zstd::encode_all(&raw[..], 3).unwrap();
        let mut out = Vec::new();
        let fed = feed(
            &stored[..],
            &Decode {
                decrypt: None,
                zstd: true,
            },
            &mut out,
            Some(&expect_of(&stored)),
            Consumer::Strict,
        )
        .unwrap();
        assert_eq!(out, raw);
        assert_eq!(fed.raw_bytes, raw.len() as u64);
        assert_eq!(fed.stored_bytes, stored.len() as u64);
    }

    proptest::proptest! {
        /// Whatever the write sizes, exactly the last HOLD_BACK bytes wait for release.
        #[test]
        fn hold_back_keeps_exactly_the_tail(sizes in proptest::collection::vec(0usize..200_000, 0..12)) {
            let data: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            let mut hold = HoldBack::new(&mut out);
            let mut at = 0;
            for n in &sizes {
                hold.write_all(&data[at..at + n]).unwrap();
                at += n;
            }
            let passed = data.len().saturating_sub(HOLD_BACK);
            proptest::prop_assert_eq!(hold.raw, data.len() as u64);
            proptest::prop_assert_eq!(&hold.inner[..], &data[..passed]);
            hold.release().unwrap();
            proptest::prop_assert_eq!(&out, &data);
        }
    }

    #[test]
    fn file_sink_writes_at_most_128_kib_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let mut sink = FileSink(std::fs::File::create(&path).unwrap());
        let data = vec![3u8; 3 << 20];
        assert_eq!(sink.write(&data).unwrap(), FILE_WRITE);
        sink.write_all(&data[FILE_WRITE..]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn mismatch_withholds_the_tail() {
        let raw: Vec<u8> = (0..500_000u32).map(|i| (i % 7) as u8).collect();
        let mut expect = expect_of(&raw);
        expect.sha256 = "00".repeat(32);
        let mut out = Vec::new();
        let err = feed(
            &raw[..],
            &Decode::identity(),
            &mut out,
            Some(&expect),
            Consumer::Strict,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("checksum mismatch"), "{err}");
        assert!(out.len() <= raw.len() - HOLD_BACK, "{}", out.len());
    }

    #[test]
    fn damaged_zstd_is_reported_as_checksum_mismatch() {
        let raw: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
        let good = zstd::encode_all(&raw[..], 3).unwrap();
        let mut bad = good.clone();
        for b in &mut bad[100..200] {
            *b ^= 0xff;
        }
        let err = feed(
            &bad[..],
            &Decode {
                decrypt: None,
                zstd: true,
            },
            io::sink(),
            Some(&expect_of(&good)),
            Consumer::Strict,
        )
        .unwrap_err();
        assert!(matches!(err, FeedError::Checksum { .. }), "{err}");
    }
}
