//! Where artifacts live. One small trait, implemented once per backend, so commands never
//! know whether they talk to S3 or a mounted volume.
//!
//! Writes are two-phase on purpose: an [`Upload`] only becomes visible under its final key on
//! [`Upload::finish`]. A failed backup calls [`Upload::abort`] and leaves nothing behind.
//!
//! Artifacts and manifests are created, never replaced: [`Upload::finish`] and
//! [`Storage::put_new`] refuse a key that already exists ([`StorageError::Exists`]), so two
//! runs that derive the same key (same stage, database and second) cannot overwrite each
//! other. Only [`Storage::put_bytes`] replaces, for rewriting a manifest's verification.

pub mod file;
pub mod s3;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;

use crate::config::Destination;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0} does not exist")]
    NotFound(String),
    /// A create-only write found the key taken (another run wrote it first); that object
    /// was left untouched.
    #[error("{0} already exists (another run wrote it first); left it untouched")]
    Exists(String),
    #[error("{op} {key}: {message}")]
    Backend {
        op: &'static str,
        key: String,
        message: String,
    },
    #[error("{op} {key}: {source}")]
    Io {
        op: &'static str,
        key: String,
        source: std::io::Error,
    },
}

impl StorageError {
    pub fn backend(op: &'static str, key: &str, message: impl Into<String>) -> Self {
        StorageError::Backend {
            op,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Why a destination cannot take a backup, found before any dump starts.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Unusable {
    /// The destination setting (bucket, directory) is wrong: exit 2.
    #[error("{0}")]
    Destination(String),
    /// `--lock-days` asks for Object Lock the bucket does not have: exit 2.
    #[error("{0}")]
    Lock(String),
    /// The service did not answer usefully: exit 1.
    #[error("{0}")]
    Service(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
    /// S3's ETag (quotes included, as S3 sends it); `None` for files.
    pub etag: Option<String>,
    /// The current version on a versioned bucket (from HeadObject only).
    pub version_id: Option<String>,
    /// From HeadObject on S3: the object's metadata names the backhaul run that created it.
    /// `false` when it does not (the old shell script's dumps) or when not asked (listings,
    /// the file backend, which keeps no metadata).
    pub written_by_backhaul: bool,
}

/// What a create-only write made: recorded in the manifest, so `verify` can tell that the
/// object beside a manifest is the one it describes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    pub parts: u32,
    pub etag: Option<String>,
    pub version_id: Option<String>,
}

/// A write that never finished: an open S3 multipart upload (a run killed mid-upload), or a
/// file backend's hidden temp file.
#[derive(Debug, Clone, PartialEq)]
pub struct Incomplete {
    pub key: String,
    /// Multipart upload id, or the temp file's key.
    pub id: String,
    pub initiated: Option<DateTime<Utc>>,
    /// Bytes of the parts uploaded so far; `None` when the server would not say.
    pub bytes: Option<u64>,
}

/// A random id for this process, recorded with every object it creates. When a create-only
/// write is refused, the owner tells "our own earlier attempt already succeeded (its answer
/// was lost and the SDK retried)" from "another run got there first".
pub fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        use std::io::Read;
        let mut b = [0u8; 12];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
        if read.is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            b[..8].copy_from_slice(&(t.as_nanos() as u64).to_le_bytes());
            b[8..].copy_from_slice(&std::process::id().to_le_bytes());
        }
        hex::encode(b)
    })
}

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// S3 Object Lock state of an object's current version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LockInfo {
    /// GOVERNANCE or COMPLIANCE.
    pub mode: Option<String>,
    pub retain_until: Option<DateTime<Utc>>,
    pub legal_hold: bool,
}

impl LockInfo {
    /// `GOVERNANCE until 2026-12-31T02:00:00Z`, `legal hold`, both, or `None` when unlocked.
    pub fn describe(&self, now: DateTime<Utc>) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(t) = self.retain_until.filter(|t| *t > now) {
            parts.push(format!(
                "{} until {}",
                self.mode.as_deref().unwrap_or("retained"),
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        if self.legal_hold {
            parts.push("legal hold".to_string());
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// A write in progress. Parts arrive in order; their sizes follow [`Storage::part_size`].
#[async_trait]
pub trait Upload: Send {
    async fn write(&mut self, part: Bytes) -> Result<(), StorageError>;
    /// Makes the object visible under its key, unless the key is taken
    /// ([`StorageError::Exists`]; the caller still aborts to discard what was written).
    async fn finish(&mut self) -> Result<Stored, StorageError>;
    /// Discards everything written so far. Safe to call more than once.
    async fn abort(&mut self) -> Result<(), StorageError>;
}

#[async_trait]
pub trait Storage: Send + Sync {
    /// Size of the `index`-th (0-based) part a producer should hand to [`Upload::write`].
    fn part_size(&self, index: u32) -> usize;
    async fn begin(&self, key: &str) -> Result<Box<dyn Upload>, StorageError>;
    /// Writes `key`, replacing any object there.
    async fn put_bytes(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError>;
    /// [`Storage::put_bytes`], the new version under `lock`'s retention and legal hold: a
    /// locked object's replacement must not be an unlocked current version. Backends without
    /// Object Lock just write.
    async fn put_bytes_locked(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        _lock: &LockInfo,
    ) -> Result<(), StorageError> {
        self.put_bytes(key, body, content_type).await
    }
    /// Creates `key`; [`StorageError::Exists`] when it is taken.
    async fn put_new(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<Stored, StorageError>;
    async fn get(&self, key: &str) -> Result<Reader, StorageError>;
    async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError>;
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError>;
    /// Every object under `prefix`, following pagination to the end.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError>;
    async fn delete(&self, keys: &[String]) -> Result<(), StorageError>;
    /// Object Lock state of `key`; backends without Object Lock have none.
    async fn lock(&self, _key: &str) -> Result<Option<LockInfo>, StorageError> {
        Ok(None)
    }
    /// Can a backup be written here at all? Asked before any dump starts, so a wrong bucket or
    /// a missing mount costs no dump.
    async fn check_writable(&self) -> Result<(), Unusable> {
        Ok(())
    }
    /// Writes under `prefix` that never finished, oldest first.
    async fn incomplete(&self, prefix: &str) -> Result<Vec<Incomplete>, StorageError>;
    /// Discards one of them (its parts stop costing money).
    async fn abort_incomplete(&self, upload: &Incomplete) -> Result<(), StorageError>;
}

/// Tuning shared by backends that upload in parts.
#[derive(Debug, Clone, Copy)]
pub struct PartPlan {
    /// Size of the first parts; later parts grow so 10,000 parts reach S3's 5 TiB object limit.
    pub base: usize,
    /// Bytes of parts allowed in flight at once: bounds memory whatever the part size.
    pub in_flight_budget: usize,
    pub max_in_flight: usize,
}

impl Default for PartPlan {
    fn default() -> Self {
        PartPlan {
            base: 8 << 20,
            in_flight_budget: 32 << 20,
            max_in_flight: 4,
        }
    }
}

pub const MIN_PART: usize = 5 << 20;
const MAX_PART: usize = 5 << 30;

impl PartPlan {
    /// Doubling every 1,000 parts from 8 MiB gives ~8 TiB in 10,000 parts, so any stream up to
    /// S3's 5 TiB limit fits, while the first 8 GiB use small parts and little memory.
    pub fn part_size(&self, index: u32) -> usize {
        let shift = (index / 1000).min(16);
        self.base.saturating_mul(1usize << shift).min(MAX_PART)
    }

    pub fn in_flight_for(&self, part_size: usize) -> usize {
        (self.in_flight_budget / part_size.max(1)).clamp(1, self.max_in_flight)
    }
}

/// Bytes of upload parts in flight across every upload of the process. [`PartPlan`]'s budget is
/// per upload; a backup with `--jobs` streams several files at once, each its own upload, and
/// their parts would add up (32 MiB each) past the memory a run is meant to need.
///
/// Only parts already handed to a request task hold a share, and each such task ends on its
/// own (sent or failed), so a waiting upload always gets its turn: no upload can block another
/// for good. A part larger than the whole budget takes all of it.
#[derive(Debug, Clone)]
pub struct PartBudget {
    bytes: Arc<tokio::sync::Semaphore>,
    total: usize,
}

impl PartBudget {
    /// Half again one upload's budget: a single-stream backup keeps all its parts in flight,
    /// several streams share the rest.
    pub fn for_plan(plan: &PartPlan) -> Self {
        Self::new(
            plan.in_flight_budget
                .saturating_add(plan.in_flight_budget / 2),
        )
    }

    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, u32::MAX as usize);
        PartBudget {
            bytes: Arc::new(tokio::sync::Semaphore::new(total)),
            total,
        }
    }

    /// Waits until `len` bytes (at most the whole budget) are free, and holds them until the
    /// permit is dropped.
    pub async fn acquire(&self, len: usize) -> tokio::sync::OwnedSemaphorePermit {
        let n = len.clamp(1, self.total) as u32;
        self.bytes
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the part budget's semaphore is never closed")
    }
}

pub async fn open(
    dest: &Destination,
    plan: PartPlan,
    sse: s3::Sse,
) -> anyhow::Result<Arc<dyn Storage>> {
    Ok(match dest {
        Destination::S3 {
            bucket,
            force_path_style,
            ..
        } => Arc::new(s3::S3Storage::connect(bucket, *force_path_style, plan, sse).await?),
        Destination::File { root, base } => {
            Arc::new(file::FileStorage::new(root.clone()).checked_at(base.clone()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_reach_five_tib_in_ten_thousand_parts() {
        let plan = PartPlan::default();
        let total: u128 = (0..10_000).map(|i| plan.part_size(i) as u128).sum();
        assert!(total >= 5u128 << 40, "{total}");
        assert!((0..10_000).all(|i| plan.part_size(i) >= MIN_PART));
        assert_eq!(plan.part_size(0), 8 << 20);
        assert_eq!(plan.in_flight_for(8 << 20), 4);
        assert_eq!(plan.in_flight_for(64 << 20), 1);
    }

    #[tokio::test]
    async fn part_budget_is_shared_and_never_blocks_for_good() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let pending = |f: &mut std::pin::Pin<Box<dyn Future<Output = _> + Send>>| {
            matches!(
                f.as_mut().poll(&mut Context::from_waker(Waker::noop())),
                Poll::Pending
            )
        };
        let budget = PartBudget::for_plan(&PartPlan::default());
        assert_eq!(budget.total, 48 << 20);
        // Two uploads' parts share the budget: six 8 MiB parts fill it...
        let other = budget.clone();
        let mut held = Vec::new();
        for i in 0..6 {
            let b = if i % 2 == 0 { &budget } else { &other };
            held.push(b.acquire(8 << 20).await);
        }
        // ...and a seventh, from either upload, waits for one of them to be sent.
        let mut next: std::pin::Pin<Box<dyn Future<Output = _> + Send>> =
            Box::pin(other.acquire(8 << 20));
        assert!(pending(&mut next));
        held.pop();
        let Poll::Ready(p) = next.as_mut().poll(&mut Context::from_waker(Waker::noop())) else {
            panic!("a freed share must go to the waiting part");
        };
        held.push(p);
        drop(held);
        // A part larger than the whole budget takes all of it rather than waiting forever.
        let big = budget.acquire(5 << 30).await;
        let mut small: std::pin::Pin<Box<dyn Future<Output = _> + Send>> =
            Box::pin(budget.acquire(1));
        assert!(pending(&mut small));
        drop(big);
        assert!(!pending(&mut small));
    }
}
