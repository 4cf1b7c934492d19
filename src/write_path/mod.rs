//! The data path of a backup: a producer (dump tool output, zip writer) writes into a
//! [`PartSink`], which hashes and counts the stored bytes and cuts them into upload parts;
//! an async consumer hands the parts to storage as they come.
//!
//! source → compress → [encrypt] → hash + count → parts → storage
//!
//! Encryption wraps the producer (see [`crate::crypto::Recipients::encrypting`]), so it comes
//! after compression (ciphertext does not compress) and before hashing (the manifest's
//! SHA-256 is of the stored bytes, checkable without a key).
//!
//! The producer runs on a blocking thread (compression and hashing are CPU-bound) and is
//! joined to the async upload by a channel of capacity one, so memory is bounded by
//! (1 part being filled + 1 queued + the parts in flight), whatever the database size.

pub mod follow;

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::progress::Progress;
use crate::storage::{Storage, StorageError, Upload};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    /// Bytes the source produced, before compression.
    pub raw_bytes: u64,
    /// Bytes stored, after compression.
    pub stored_bytes: u64,
    /// SHA-256 of the stored object, hex.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("reading the dump stream: {0}")]
    Producer(io::Error),
}

/// Collects written bytes into parts of the size storage asks for and sends each full part on.
pub struct PartSink {
    tx: mpsc::Sender<Bytes>,
    storage: Arc<dyn Storage>,
    buf: Vec<u8>,
    index: u32,
    hasher: Sha256,
    bytes: u64,
    progress: Progress,
}

impl PartSink {
    fn new(tx: mpsc::Sender<Bytes>, storage: Arc<dyn Storage>, progress: Progress) -> Self {
        let cap = storage.part_size(0);
        PartSink {
            tx,
            storage,
            buf: Vec::with_capacity(cap),
            index: 0,
            hasher: Sha256::new(),
            bytes: 0,
            progress,
        }
    }

    fn ship(&mut self) -> io::Result<()> {
        self.index += 1;
        let next = Vec::with_capacity(self.storage.part_size(self.index));
        let part = std::mem::replace(&mut self.buf, next);
        self.tx
            .blocking_send(Bytes::from(part))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))
    }

    fn finish(mut self) -> io::Result<(u64, String)> {
        if !self.buf.is_empty() || self.index == 0 {
            self.ship()?;
        }
        Ok((self.bytes, hex::encode(self.hasher.finalize())))
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let target = self.storage.part_size(self.index);
        let room = target - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        self.hasher.update(&data[..n]);
        self.bytes += n as u64;
        self.progress.stored(n as u64);
        if self.buf.len() == target {
            self.ship()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a producer does: write the artifact into the sink, return how many raw bytes it read.
/// The sink is a plain writer so producers can be wrapped (encryption) without knowing it.
pub type Producer = Box<dyn FnOnce(&mut dyn Write) -> io::Result<u64> + Send>;

/// Runs `producer` on a blocking thread and uploads what it writes. Does not finish or abort
/// the upload: the caller decides, once it knows whether the source itself succeeded.
pub async fn stream(
    storage: Arc<dyn Storage>,
    upload: &mut dyn Upload,
    producer: Producer,
    progress: Progress,
) -> Result<StreamStats, PipelineError> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(1);
    let produce = tokio::task::spawn_blocking(move || {
        let mut sink = PartSink::new(tx, storage, progress);
        let raw = producer(&mut sink)?;
        let (stored, sha) = sink.finish()?;
        Ok::<_, io::Error>(StreamStats {
            raw_bytes: raw,
            stored_bytes: stored,
            sha256: sha,
        })
    });
    let mut upload_err = None;
    while let Some(part) = rx.recv().await {
        if let Err(e) = upload.write(part).await {
            upload_err = Some(e);
            break;
        }
    }
    // Closing the receiver makes a still-running producer fail fast with BrokenPipe.
    drop(rx);
    let produced = produce.await.map_err(|e| {
        PipelineError::Producer(io::Error::other(format!("producer panicked: {e}")))
    })?;
    if let Some(e) = upload_err {
        return Err(e.into());
    }
    produced.map_err(PipelineError::Producer)
}

/// Read buffer for child output; larger than the default pipe size so each read drains it.
const READ_BUF: usize = 1 << 20;

/// How stored bytes are encoded on the way out.
#[derive(Debug, Clone, Copy)]
pub enum Codec {
    Identity,
    /// `threads` 0: compressed on the calling thread; more: by that many zstd workers
    /// (zstdmt). Even at level 1 on 2 cores, workers measured cheaper than the calling thread,
    /// and faster (bench/RESULTS-2026-12-06-perf.md), so `PG_ZSTD_THREADS=1` keeps one worker.
    Zstd {
        level: i32,
        threads: u32,
    },
}

/// Copies `src` into `sink` through `codec`. Returns the raw byte count.
pub fn copy_encoded(mut src: impl Read, sink: &mut dyn Write, codec: Codec) -> io::Result<u64> {
    match codec {
        Codec::Identity => copy_counting(&mut src, sink),
        Codec::Zstd { level, threads } => {
            let mut enc = zstd::stream::write::Encoder::new(sink, level)?;
            enc.include_checksum(true)?;
            if threads > 0 {
                enc.multithread(threads)?;
            }
            let raw = copy_counting(&mut src, &mut enc)?;
            enc.finish()?;
            Ok(raw)
        }
    }
}

pub fn copy_counting(src: &mut impl Read, dst: &mut (impl Write + ?Sized)) -> io::Result<u64> {
    let mut buf = vec![0u8; READ_BUF];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::file::FileStorage;

    #[tokio::test]
    async fn stream_hashes_what_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path().to_path_buf()));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected_raw = data.len() as u64;
        let mut up = storage.begin("a/b.zst").await.unwrap();
        let producer: Producer = Box::new(move |sink| {
            copy_encoded(
                &data[..],
                sink,
                Codec::Zstd {
                    level: 3,
                    threads: 2,
                },
            )
        });
        let stats = stream(storage.clone(), up.as_mut(), producer, Progress::hidden())
            .await
            .unwrap();
        up.finish().await.unwrap();
        let stored = std::fs::read(dir.path().join("a/b.zst")).unwrap();
        assert_eq!(stats.raw_bytes, expected_raw);
        assert_eq!(stats.stored_bytes, stored.len() as u64);
        assert_eq!(stats.sha256, hex::encode(Sha256::digest(&stored)));
        let back = zstd::decode_all(&stored[..]).unwrap();
        assert_eq!(back.len() as u64, expected_raw);
    }

    #[tokio::test]
    async fn producer_error_is_reported_and_nothing_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path().to_path_buf()));
        let mut up = storage.begin("x.dump").await.unwrap();
        let producer: Producer = Box::new(|sink| {
            sink.write_all(&[1; 10])?;
            Err(io::Error::other("boom"))
        });
        let err = stream(storage.clone(), up.as_mut(), producer, Progress::hidden())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        up.abort().await.unwrap();
        assert!(storage.list("").await.unwrap().is_empty());
    }
}
