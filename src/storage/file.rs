//! A directory as a destination (EFS mounts, offline use). Objects are written to a hidden
//! temp file beside the target and renamed into place, so a failed write leaves no file
//! under the final name.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{ObjectInfo, Reader, Storage, StorageError, Upload};

pub struct FileStorage {
    root: PathBuf,
}

impl FileStorage {
    pub fn new(root: PathBuf) -> Self {
        FileStorage { root }
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

    async fn finish(&mut self) -> Result<u32, StorageError> {
        let (mut f, tmp) = self
            .tmp
            .take()
            .ok_or_else(|| StorageError::backend("finish", &self.key, "upload already closed"))?;
        f.flush().await.map_err(io("flush", &self.key))?;
        f.sync_all().await.map_err(io("fsync", &self.key))?;
        drop(f);
        tokio::fs::rename(&tmp, &self.target)
            .await
            .map_err(io("rename", &self.key))?;
        Ok(self.parts.max(1))
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
    fn part_size(&self, _index: u32) -> usize {
        1 << 20
    }

    async fn begin(&self, key: &str) -> Result<Box<dyn Upload>, StorageError> {
        let target = self.path(key)?;
        let dir = target.parent().expect("key has a parent").to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io("mkdir", key))?;
        let name = target
            .file_name()
            .expect("key has a file name")
            .to_string_lossy();
        let tmp = dir.join(format!(".{name}.{}.partial", std::process::id()));
        let f = tokio::fs::File::create(&tmp)
            .await
            .map_err(io("create", key))?;
        Ok(Box::new(FileUpload {
            key: key.to_string(),
            tmp: Some((f, tmp)),
            target,
            parts: 0,
        }))
    }

    async fn put_bytes(
        &self,
        key: &str,
        body: Bytes,
        _content_type: &str,
    ) -> Result<(), StorageError> {
        let mut up = self.begin(key).await?;
        up.write(body).await?;
        up.finish().await.map(|_| ())
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
            walk(&root, &root, &prefix, &mut out).map_err(io("list", &prefix))?;
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
}

fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<ObjectInfo>) -> std::io::Result<()> {
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
            walk(root, &path, prefix, out)?;
        } else if ft.is_file() {
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            let hidden = rel.rsplit('/').next().is_some_and(|n| n.starts_with('.'));
            if !hidden && rel.starts_with(prefix) {
                let m = entry.metadata()?;
                out.push(ObjectInfo {
                    key: rel,
                    size: m.len(),
                    last_modified: m.modified().ok().map(Into::into),
                });
            }
        }
    }
    Ok(())
}
