//! The `<artifact key>.manifest.json` written beside every artifact. It is what proves an
//! object is complete and intact (S3 emulators and some S3-compatible servers do not verify
//! checksums; our SHA-256 does), and what `list`, `verify` and `restore` read back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::layout::Kind;

pub const FORMAT: u32 = 1;
/// A directory-format (parallel, `backup --jobs N`) dump: the manifest also lists its data files.
/// A reader that does not know a format refuses the manifest rather than guess.
pub const FORMAT_DIRECTORY: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub tool: String,
    pub tool_version: String,
    pub kind: Kind,
    pub stage: String,
    pub database: String,
    pub key: String,
    pub timestamp: String,
    pub timezone: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// zstd, pg, none (PostgreSQL); zip, archive-gzip (MongoDB).
    pub compression: String,
    /// Bytes the dump tool produced, before our compression.
    pub raw_bytes: u64,
    /// Bytes of the stored object.
    pub stored_bytes: u64,
    /// SHA-256 of the stored object, hex.
    pub sha256: String,
    pub parts: u32,
    /// The stored object's ETag as S3 reported it on creation (absent on the file backend and
    /// in manifests from before it was recorded). `verify` compares it with the object's
    /// current ETag, so a manifest never vouches for an object another run wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The object's version on a versioned bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    pub source: SourceInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// PostgreSQL dumps: what the archive holds (objects, owners, ACL entries), from its TOC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<crate::source::pg_toc::Contents>,
    /// Cluster globals artifacts (`pg_dumpall --globals-only`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals: Option<GlobalsInfo>,
    /// Format 2 only: the data files of a directory dump. The top-level `sha256`,
    /// `stored_bytes`, `parts`, `etag` and `version_id` keep describing the object at `key`
    /// (its `toc.dat`), so every check that reads them stays right for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<Directory>,
}

/// Everything of a directory dump beyond its `toc.dat` object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Directory {
    /// pg_dump's `--jobs`.
    pub jobs: u32,
    /// Bytes pg_dump wrote, all files including `toc.dat`.
    pub raw_bytes: u64,
    /// Bytes stored, all objects including the TOC's.
    pub stored_bytes: u64,
    /// Every object of the backup except the TOC's and the manifest.
    pub objects: Vec<StoredObject>,
    /// Every file pg_dump wrote except `toc.dat`, in the order it closed them.
    pub files: Vec<DumpFile>,
}

/// One stored object of a directory dump, as S3 reported it on creation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub parts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

/// One file of a directory dump. Each file is its own compressed (and, when encrypted, its own
/// age) stream, stored at `[offset, offset + stored_bytes)` of `object`, so a reader can
/// verify a file on its own: before the table it holds may commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DumpFile {
    /// As pg_dump named it: "3051.dat", "blobs_3060.toc", "blob_16411.dat".
    pub name: String,
    /// Key of the object that holds it (one of [`Directory::objects`]).
    pub object: String,
    pub offset: u64,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GlobalsInfo {
    /// False when the server forbade reading password hashes (managed services) and the
    /// roles were saved with `--no-role-passwords`: restored roles then have no password.
    pub role_passwords: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SourceInfo {
    /// pg_dump, mongodump.
    pub dump_tool: String,
    pub dump_tool_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Host (no credentials), for humans reading the manifest.
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neon_endpoint: Option<String>,
    /// MongoDB: documents per `db.collection` in the dump; `verify --restore-into` compares
    /// the restored counts with these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<std::collections::BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Encryption {
    pub scheme: String,
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verification {
    pub verified_at: DateTime<Utc>,
    pub ok: bool,
    pub details: serde_json::Value,
}

impl Manifest {
    /// (raw, stored) bytes of the whole backup: for a directory dump all its files, not only
    /// the TOC object the top-level fields describe.
    pub fn backup_bytes(&self) -> (u64, u64) {
        self.directory
            .as_ref()
            .map_or((self.raw_bytes, self.stored_bytes), |d| {
                (d.raw_bytes, d.stored_bytes)
            })
    }

    pub fn to_bytes(&self) -> bytes::Bytes {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        bytes::Bytes::from(v)
    }

    pub fn from_slice(b: &[u8]) -> Result<Manifest, serde_json::Error> {
        serde_json::from_slice(b)
    }
}
