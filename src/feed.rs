//! The read side of the data path: stored object → SHA-256 + byte count → decompress → a
//! consumer (pg_restore's stdin, a temp file, `pg_restore --list`).
//!
//! The last [`HOLD_BACK`] bytes of decompressed output are withheld until the whole object
//! has been read and matched against its manifest. pg_restore runs in one transaction and
//! cannot reach its COMMIT without them, so a corrupted object is stopped before anything is
//! committed, however large it is and however late the corruption sits.
//!
//! Runs on a blocking thread: hashing and decompression are CPU-bound.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Withheld tail. Bigger than any single pg_restore read at the end of an archive, small
/// enough to be irrelevant for memory.
pub const HOLD_BACK: usize = 64 << 10;
const READ_BUF: usize = 1 << 20;

/// How the stored object is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    Identity,
    Zstd,
}

impl Decode {
    /// By extension: our zstd artifacts end in `.zst`; pg's own compression is inside the
    /// archive and pg_restore handles it.
    pub fn for_extension(ext: &str) -> Decode {
        if ext.ends_with(".zst") {
            Decode::Zstd
        } else {
            Decode::Identity
        }
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
    /// The consumer stopped taking input (pg_restore exited); its own error says why.
    #[error("writing to the restore tool: {0}")]
    Sink(io::Error),
}

/// Keeps the last [`HOLD_BACK`] bytes until [`HoldBack::release`]. After the inner writer
/// fails, further output is discarded (and the error kept) so the caller can still finish
/// hashing and report the most meaningful error.
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
            buf: Vec::with_capacity(HOLD_BACK * 2),
            raw: 0,
            error: None,
        }
    }

    fn pass(&mut self, upto: usize) {
        if self.error.is_none() {
            if let Err(e) = self.inner.write_all(&self.buf[..upto]) {
                self.error = Some(e);
            }
        }
        self.buf.drain(..upto);
    }

    fn release(mut self) -> Result<u64, io::Error> {
        let n = self.buf.len();
        self.pass(n);
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
        self.buf.extend_from_slice(data);
        self.raw += data.len() as u64;
        if self.buf.len() >= HOLD_BACK * 2 {
            let upto = self.buf.len() - HOLD_BACK;
            self.pass(upto);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Decoder<'a, W: Write> {
    Plain(HoldBack<W>),
    Zstd(zstd::stream::write::Decoder<'a, HoldBack<W>>),
}

impl<W: Write> Decoder<'_, W> {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Decoder::Plain(h) => h.write_all(b),
            Decoder::Zstd(d) => d.write_all(b),
        }
    }
    fn finish(self) -> io::Result<HoldBack<W>> {
        match self {
            Decoder::Plain(h) => Ok(h),
            Decoder::Zstd(mut d) => {
                d.flush()?;
                Ok(d.into_inner())
            }
        }
    }
}

/// Streams `src` through the checks into `sink`. On any failure the withheld tail is never
/// written; the caller then kills the consumer rather than closing its input normally.
pub fn feed<W: Write>(
    mut src: impl Read,
    decode: Decode,
    sink: W,
    expect: Option<&Expect>,
    consumer: Consumer,
) -> Result<Fed, FeedError> {
    let hold = HoldBack::new(sink);
    let mut dec = match decode {
        Decode::Identity => Decoder::Plain(hold),
        Decode::Zstd => {
            Decoder::Zstd(zstd::stream::write::Decoder::new(hold).map_err(FeedError::Decode)?)
        }
    };
    let mut hasher = Sha256::new();
    let mut stored = 0u64;
    let mut decode_error = None;
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FeedError::Read(e)),
        };
        hasher.update(&buf[..n]);
        stored += n as u64;
        // After a decode error keep hashing: a damaged object should be reported as a
        // checksum mismatch, which names the cause, not as a codec error.
        if decode_error.is_none() {
            if let Err(e) = dec.write_all(&buf[..n]) {
                decode_error = Some(e);
            }
        }
    }
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
    if let Some(e) = decode_error {
        return Err(FeedError::Decode(e));
    }
    let hold = dec.finish().map_err(FeedError::Decode)?;
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
            Decode::Zstd,
            &mut out,
            Some(&expect_of(&stored)),
            Consumer::Strict,
        )
        .unwrap();
        assert_eq!(out, raw);
        assert_eq!(fed.raw_bytes, raw.len() as u64);
        assert_eq!(fed.stored_bytes, stored.len() as u64);
    }

    #[test]
    fn mismatch_withholds_the_tail() {
        let raw: Vec<u8> = (0..500_000u32).map(|i| (i % 7) as u8).collect();
        let mut expect = expect_of(&raw);
        expect.sha256 = "00".repeat(32);
        let mut out = Vec::new();
        let err = feed(
            &raw[..],
            Decode::Identity,
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
            Decode::Zstd,
            io::sink(),
            Some(&expect_of(&good)),
            Consumer::Strict,
        )
        .unwrap_err();
        assert!(matches!(err, FeedError::Checksum { .. }), "{err}");
    }
}
