//! A directory as a destination (EFS mounts, offline use). Objects are written to a hidden
//! temp file beside the target and moved into place, so a failed write leaves no file
//! under the final name.
//!
//! Creating is hard-linking the temp file to the final name, which fails if the name exists
//! (atomically, also on NFS/EFS), so two runs cannot overwrite each other; only
//! [`Storage::put_bytes`] replaces (rename). A killed run leaves its hidden
//! `.<name>.<run>.partial` file, which [`Storage::incomplete`] reports.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{
    run_id, Incomplete, ObjectInfo, Reader, Storage, StorageError, Stored, Unusable, Upload,
};

const PARTIAL: &str = ".partial";

pub struct FileStorage {
    root: PathBuf,
    /// The directory that must already exist for a backup (see [`Storage::check_writable`]).
    base: PathBuf,
}

impl FileStorage {
    pub fn new(root: PathBuf) -> Self {
        FileStorage {
            base: root.clone(),
            root,
        }
    }

    /// The directory the destination URL names, when `root` adds a prefix below it.
    pub fn checked_at(mut self, base: PathBuf) -> Self {
        self.base = base;
        self
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        if key.split('/').any(|s| s == ".." || s.is_empty()) {
            return Err(StorageError::backend(
                "resolve",
                key,
                "key has empty or '..' segments",
            ));
        }
        Ok(self.root.join(key))
    }

    /// Opens a fresh temp file beside `key`'s path (create-new: never another run's).
    async fn start(&self, key: &str, replace: bool) -> Result<Box<dyn Upload>, StorageError> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let target = self.path(key)?;
        let dir = target.parent().expect("key has a parent").to_path_buf();
        // Backups hold the data in clear (unless encrypted): for this user only, like every
        // path backhaul creates (see private_fs).
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .await
            .map_err(io("mkdir", key))?;
        let name = target
            .file_name()
            .expect("key has a file name")
            .to_string_lossy();
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}-{n}{PARTIAL}", run_id()));
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .await
            .map_err(io("create", key))?;
        Ok(Box::new(FileUpload {
            key: key.to_string(),
            tmp: Some((f, tmp)),
            target,
            parts: 0,
            replace,
        }))
    }
}

fn io<'a>(op: &'static str, key: &'a str) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        key: key.to_string(),
        source,
    }
}

struct FileUpload {
    key: String,
    tmp: Option<(tokio::fs::File, PathBuf)>,
    target: PathBuf,
    parts: u32,
    /// Rename over an existing file instead of refusing it.
    replace: bool,
}

#[async_trait]
impl Upload for FileUpload {
    async fn write(&mut self, part: Bytes) -> Result<(), StorageError> {
        let (f, _) = self
            .tmp
            .as_mut()
            .ok_or_else(|| StorageError::backend("write", &self.key, "upload already closed"))?;
        f.write_all(&part).await.map_err(io("write", &self.key))?;
        self.parts += 1;
        Ok(())
    }

    async fn finish(&mut self) -> Result<Stored, StorageError> {
        let (mut f, tmp) = self
            .tmp
            .take()
            .ok_or_else(|| StorageError::backend("finish", &self.key, "upload already closed"))?;
        f.flush().await.map_err(io("flush", &self.key))?;
        f.sync_all().await.map_err(io("fsync", &self.key))?;
        drop(f);
        if self.replace {
            tokio::fs::rename(&tmp, &self.target)
                .await
                .map_err(io("rename", &self.key))?;
        } else {
            let linked = tokio::fs::hard_link(&tmp, &self.target).await;
            let _ = tokio::fs::remove_file(&tmp).await;
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(StorageError::Exists(self.target.display().to_string()))
                }
                Err(e) => return Err(io("link", &self.key)(e)),
            }
        }
        Ok(Stored {
            parts: self.parts.max(1),
            ..Stored::default()
        })
    }

    async fn abort(&mut self) -> Result<(), StorageError> {
        if let Some((f, tmp)) = self.tmp.take() {
            drop(f);
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        Ok(())
    }
}

impl Drop for FileUpload {
    fn drop(&mut self) {
        if let Some((_, tmp)) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[async_trait]
impl Storage for FileStorage {
    /// The directory must exist and take a file: backhaul never creates it, because a
    /// missing mount (EFS) would otherwise send the backups to the container's own disk.
    async fn check_writable(&self) -> Result<(), Unusable> {
        let url = format!("file://{}", self.base.display());
        match tokio::fs::metadata(&self.base).await {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Unusable::Destination(format!(
                    "{url} is not a directory: name the directory (or mount) the backups go to"
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Unusable::Destination(format!(
                    "{url} does not exist: create or mount it first (backhaul does not create it, so a missing mount cannot send backups to the local disk)"
                )))
            }
            Err(e) => {
                return Err(Unusable::Destination(format!(
                    "{url} cannot be read: {e}"
                )))
            }
        }
        // Trying is the only test that holds for root, read-only mounts and ACLs alike.
        let base = self.base.clone();
        let probe = tokio::task::spawn_blocking(move || {
            tempfile::Builder::new()
                .prefix(".backhaul-write-check")
                .tempfile_in(&base)
                .map(drop)
        })
        .await;
        match probe {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Unusable::Destination(format!("{url} is not writable: {e}"))),
            Err(e) => Err(Unusable::Service(format!(
                "checking {url} is writable: {e}"
            ))),
        }
    }

    fn part_size(&self, _index: u32) -> usize {
        1 << 20
    }

    async fn begin(&self, key: &str) -> Result<Box<dyn Upload>, StorageError> {
        self.start(key, false).await
    }

    async fn put_bytes(
        &self,
        key: &str,
        body: Bytes,
        _content_type: &str,
    ) -> Result<(), StorageError> {
        let mut up = self.start(key, true).await?;
        up.write(body).await?;
        up.finish().await.map(|_| ())
    }

    async fn put_new(
        &self,
        key: &str,
        body: Bytes,
        _content_type: &str,
    ) -> Result<Stored, StorageError> {
        let mut up = self.start(key, false).await?;
        up.write(body).await?;
        up.finish().await
    }

    async fn get(&self, key: &str) -> Result<Reader, StorageError> {
        let path = self.path(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::NotFound(key.to_string()))
            }
            Err(e) => Err(io("open", key)(e)),
        }
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::NotFound(key.to_string()))
            }
            Err(e) => Err(io("read", key)(e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: m.len(),
                last_modified: m.modified().ok().map(Into::into),
                etag: None,
                version_id: None,
                written_by_backhaul: false,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("stat", key)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &root, &mut out).map_err(io("list", &prefix))?;
            let mut out: Vec<ObjectInfo> = out
                .into_iter()
                .filter(|(o, hidden)| !hidden && o.key.starts_with(&prefix))
                .map(|(o, _)| o)
                .collect();
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .expect("list task does not panic")
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        for key in keys {
            match tokio::fs::remove_file(self.path(key)?).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("delete", key)(e)),
            }
        }
        Ok(())
    }

    async fn incomplete(&self, prefix: &str) -> Result<Vec<Incomplete>, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            walk(&root, &root, &mut all).map_err(io("list", &prefix))?;
            let mut out: Vec<Incomplete> = all
                .into_iter()
                .filter(|(_, hidden)| *hidden)
                .filter_map(|(o, _)| {
                    let key = partial_target(&o.key)?;
                    key.starts_with(&prefix).then_some(Incomplete {
                        key,
                        id: o.key,
                        initiated: o.last_modified,
                        bytes: Some(o.size),
                    })
                })
                .collect();
            out.sort_by(|a, b| (a.initiated, &a.key).cmp(&(b.initiated, &b.key)));
            Ok(out)
        })
        .await
        .expect("list task does not panic")
    }

    async fn abort_incomplete(&self, upload: &Incomplete) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(&upload.id)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("delete", &upload.id)(e)),
        }
    }
}

/// `dir/.name.<run>-<n>.partial` is a write of `dir/name` in progress (or killed).
fn partial_target(tmp_key: &str) -> Option<String> {
    let (dir, file) = match tmp_key.rsplit_once('/') {
        Some((d, f)) => (Some(d), f),
        None => (None, tmp_key),
    };
    let inner = file.strip_prefix('.')?.strip_suffix(PARTIAL)?;
    let (name, _run) = inner.rsplit_once('.')?;
    Some(match dir {
        Some(d) => format!("{d}/{name}"),
        None => name.to_string(),
    })
}

/// Every file under `dir`, with whether its name is hidden (a temp file, or not ours).
fn walk(root: &Path, dir: &Path, out: &mut Vec<(ObjectInfo, bool)>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else if ft.is_file() {
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            let hidden = rel.rsplit('/').next().is_some_and(|n| n.starts_with('.'));
            let m = entry.metadata()?;
            out.push((
                ObjectInfo {
                    key: rel,
                    size: m.len(),
                    last_modified: m.modified().ok().map(Into::into),
                    etag: None,
                    version_id: None,
                    written_by_backhaul: false,
                },
                hidden,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "prod/2024-01-01_00h00m00s_PGSQL/backup_prod_app_2024-01-01_00h00m00s.dump";

    #[tokio::test]
    async fn creates_never_replace_but_put_bytes_does() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path().to_path_buf());
        let first = s.put_new(KEY, Bytes::from_static(b"first"), "").await;
        assert_eq!(first.unwrap().parts, 1);
        let mut up = s.begin(KEY).await.unwrap();
        up.write(Bytes::from_static(b"second")).await.unwrap();
        let refused = up.finish().await;
        assert!(
            matches!(refused, Err(StorageError::Exists(_))),
            "{refused:?}"
        );
        let again = s.put_new(KEY, Bytes::from_static(b"third"), "").await;
        assert!(matches!(again, Err(StorageError::Exists(_))), "{again:?}");
        assert_eq!(&s.get_bytes(KEY).await.unwrap()[..], b"first");
        // Only this user reads backups (the test's umask may allow more).
        use std::os::unix::fs::MetadataExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(KEY)), 0o600);
        assert_eq!(mode(dir.path().join(KEY).parent().unwrap()), 0o700);
        assert_eq!(s.incomplete("").await.unwrap(), vec![], "no temp file left");
        s.put_bytes(KEY, Bytes::from_static(b"replaced"), "")
            .await
            .unwrap();
        assert_eq!(&s.get_bytes(KEY).await.unwrap()[..], b"replaced");
    }

    #[tokio::test]
    async fn unfinished_writes_are_listed_and_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path().to_path_buf());
        let mut up = s.begin(KEY).await.unwrap();
        up.write(Bytes::from_static(b"12345")).await.unwrap();
        // A killed run never gets to abort or drop: forget the upload instead.
        std::mem::forget(up);
        assert_eq!(
            s.list("").await.unwrap(),
            vec![],
            "temp files are not objects"
        );
        let left = s.incomplete("prod/").await.unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!((left[0].key.as_str(), left[0].bytes), (KEY, Some(5)));
        assert!(s.incomplete("dev/").await.unwrap().is_empty());
        s.abort_incomplete(&left[0]).await.unwrap();
        assert!(s.incomplete("").await.unwrap().is_empty());
    }
}
