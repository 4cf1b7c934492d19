//! What a PostgreSQL archive holds and whether a cluster can take it: the archive's schema
//! script read from the head of the stored object (see [`crate::source::pg_toc`]), the same
//! script of a live database, and the role preflight restore runs before touching a target.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::io::SyncIoBridge;

use crate::commands::restore::PgTarget;
use crate::read_path::{self, Decode};
use crate::secret::Redactor;
use crate::source::child::ChildProc;
use crate::source::pg_toc::{self, Contents, Entry};
use crate::source::postgres::{self as pg, PgTools};
use crate::storage::Storage;

/// Decoded bytes pg_restore may read before its TOC must be complete. A TOC is a few KiB per
/// object; this covers hundreds of thousands of objects without ever reading a big archive.
const HEAD_LIMIT: u64 = 256 << 20;

/// Which of pg_restore's defaults a restore keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Privileges {
    /// `--no-owner`: objects belong to the restoring role.
    pub no_owner: bool,
    /// `--no-acl`: no GRANT/REVOKE/ALTER DEFAULT PRIVILEGES.
    pub no_acl: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the backup names {n} role(s) that do not exist in the target cluster: {list}. Nothing was changed. Either create them first, with `backhaul restore-globals latest --stage <stage> --to <cluster URL>` (the roles saved beside every backup), or restore without owners and grants: --no-owner --no-acl (objects then belong to the restoring role){always}", n = .missing.len(), list = .missing.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", "), always = if .always.is_empty() { String::new() } else { format!("; {} named in policies or user mappings are needed either way", .always.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ")) })]
pub struct MissingRoles {
    pub missing: Vec<String>,
    /// Those of `missing` that --no-owner --no-acl would not make unnecessary.
    pub always: Vec<String>,
}

/// The schema script of the archive stored at `key`, from the head of the object only.
pub async fn archive_entries(
    storage: &Arc<dyn Storage>,
    key: &str,
    decode: Decode,
    tools: &PgTools,
    redactor: Redactor,
) -> anyhow::Result<Vec<Entry>> {
    let mut child = pg::spawn_schema_script(tools, redactor)?;
    let stdin = child.take_stdin_file().context("pg_restore has no stdin")?;
    let reader = storage.get(key).await?;
    let src = SyncIoBridge::new(reader);
    let feeding =
        tokio::task::spawn_blocking(move || read_path::feed_head(src, &decode, stdin, HEAD_LIMIT));
    let script = read_script(&mut child).await;
    let fed = feeding.await.context("reading the archive's head")?;
    // A stream that could not be read or decrypted is the cause; pg_restore only saw it end.
    let fed = match fed {
        Ok(n) => n,
        Err(e) => {
            let _ = child.terminate().await;
            return Err(anyhow::Error::from(e).context(format!("reading the head of {key}")));
        }
    };
    child
        .wait()
        .await
        .with_context(|| format!("reading the table of contents of {key}"))?;
    tracing::debug!(key, decoded_bytes_fed = fed, "table of contents read");
    Ok(pg_toc::parse(&script?))
}

/// The schema script of an archive's head held in memory (a directory dump's TOC made into a
/// custom archive's head, see [`crate::source::pg_archive::read_dir_toc`]).
pub async fn head_entries(
    head: &[u8],
    tools: &PgTools,
    redactor: Redactor,
) -> anyhow::Result<Vec<Entry>> {
    use std::io::Write as _;
    let mut child = pg::spawn_schema_script(tools, redactor)?;
    let mut stdin = child.take_stdin_file().context("pg_restore has no stdin")?;
    let head = head.to_vec();
    let feeding = tokio::task::spawn_blocking(move || match stdin.write_all(&head) {
        // pg_restore read what it needed and exited.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    });
    let script = read_script(&mut child).await;
    let fed = feeding.await.context("writing the archive's head")?;
    child
        .wait()
        .await
        .context("reading the table of contents")?;
    fed.context("writing the archive's head")?;
    Ok(pg_toc::parse(&script?))
}

/// [`preflight`] for an archive's head held in memory.
pub async fn preflight_head(
    head: &[u8],
    target: &PgTarget,
    privileges: Privileges,
) -> anyhow::Result<Vec<Entry>> {
    let (entries, existing) = tokio::join!(
        head_entries(head, &target.tools, target.redactor.clone()),
        existing_roles(target)
    );
    let entries = entries?;
    check_roles(&entries, privileges, &existing?)?;
    Ok(entries)
}

/// Reads an archive's TOC from a copy of the head of a stream that goes elsewhere (a backup
/// on its way to storage): pg_dump writes the TOC first even into a pipe, so `pg_restore`
/// fed the first bytes prints the schema script and exits. No second read of the object,
/// and it works for encrypted backups, whose stored bytes the backup cannot read back.
pub struct TocTap {
    child: ChildProc,
    script: tokio::task::JoinHandle<std::io::Result<String>>,
}

impl TocTap {
    /// Starts the reader; the returned file is its input, for [`HeadTee`].
    pub fn start(tools: &PgTools, redactor: Redactor) -> anyhow::Result<(TocTap, std::fs::File)> {
        let mut child = pg::spawn_schema_script(tools, redactor)?;
        let stdin = child.take_stdin_file().context("pg_restore has no stdin")?;
        let mut out = child.take_stdout().context("pg_restore has no stdout")?;
        let script = tokio::task::spawn_blocking(move || {
            let mut s = String::new();
            out.read_to_string(&mut s).map(|_| s)
        });
        Ok((TocTap { child, script }, stdin))
    }

    /// The summary, once the stream has ended (the tee closed its side).
    pub async fn finish(self, tools: &PgTools) -> anyhow::Result<Contents> {
        let script = self.script.await.context("reading the schema script")?;
        self.child
            .wait()
            .await
            .context("reading the archive's table of contents")?;
        let script = script.context("reading the schema script")?;
        Ok(contents(&pg_toc::parse(&script), tools))
    }
}

/// Passes a stream through unchanged and copies its first `limit` bytes to `side`; once the
/// side stops taking them (its reader has what it needs and exited) it is dropped. A failing
/// side never fails the main stream.
pub struct HeadTee<R> {
    inner: R,
    side: Option<std::fs::File>,
    left: u64,
}

impl<R> HeadTee<R> {
    pub fn new(inner: R, side: Option<std::fs::File>) -> HeadTee<R> {
        HeadTee {
            inner,
            side,
            left: HEAD_LIMIT,
        }
    }
}

impl<R: std::io::Read> std::io::Read for HeadTee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Write as _;
        let n = self.inner.read(buf)?;
        if let Some(side) = &mut self.side {
            let take = (n as u64).min(self.left) as usize;
            self.left -= take as u64;
            if n == 0 || side.write_all(&buf[..take]).is_err() || self.left == 0 {
                self.side = None;
            }
        }
        Ok(n)
    }
}

/// The same script for a live database (`pg_dump` with the schema sections).
pub async fn live_entries(target: &PgTarget) -> anyhow::Result<Vec<Entry>> {
    let mut child = pg::spawn_schema_dump(
        &target.tools,
        &target.conn,
        &target.database,
        target.redactor.clone(),
    )?;
    let script = read_script(&mut child).await;
    child
        .wait()
        .await
        .with_context(|| format!("dumping the schema of \"{}\"", target.database))?;
    Ok(pg_toc::parse(&script?))
}

async fn read_script(child: &mut ChildProc) -> anyhow::Result<String> {
    let mut out = child.take_stdout().context("no stdout")?;
    tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).map(|_| s)
    })
    .await
    .context("reading the schema script")?
    .context("reading the schema script")
}

/// The summary of a directory-format dump from a copy of its `toc.dat`, read by pg_restore in
/// a private directory under `parent` (removed after).
pub async fn dir_contents(
    tools: &PgTools,
    toc: &[u8],
    parent: &std::path::Path,
    redactor: Redactor,
) -> anyhow::Result<Contents> {
    use std::io::Write as _;
    let dir = crate::private_fs::PrivateDir::new_in(parent, "pgdir-toc")?;
    crate::private_fs::create_file(&dir.path().join("toc.dat"))?.write_all(toc)?;
    let mut child = pg::spawn_dir_schema_script(tools, dir.path(), redactor)?;
    let script = read_script(&mut child).await;
    child
        .wait()
        .await
        .context("reading the dump's table of contents")?;
    Ok(contents(&pg_toc::parse(&script?), tools))
}

/// The summary the manifest records, tagged with the major version of the tool that wrote
/// the script (statement texts are compared only between equal majors).
pub fn contents(entries: &[Entry], tools: &PgTools) -> Contents {
    let mut c = pg_toc::summarize(entries);
    c.tool_major = tools.major;
    c
}

/// Every role of the target cluster, for [`check_roles`]. Asked for whether or not the archive
/// names any, so that it can run while the archive's head is still being read.
pub async fn existing_roles(target: &PgTarget) -> anyhow::Result<BTreeSet<String>> {
    Ok(target
        .query("select rolname from pg_catalog.pg_roles")
        .await?
        .lines()
        .map(str::to_string)
        .collect())
}

/// Refuses, before anything is changed, a restore whose owners, grantees or policy roles
/// do not exist in the target cluster (`existing`).
pub fn check_roles(
    entries: &[Entry],
    privileges: Privileges,
    existing: &BTreeSet<String>,
) -> Result<(), MissingRoles> {
    let roles = pg_toc::roles(entries);
    let needed = roles.needed(!privileges.no_owner, !privileges.no_acl);
    let missing: Vec<String> = needed.difference(existing).cloned().collect();
    if missing.is_empty() {
        return Ok(());
    }
    let always = missing
        .iter()
        .filter(|r| roles.always.contains(*r))
        .cloned()
        .collect();
    Err(MissingRoles { missing, always })
}

/// The role preflight of a restore: the archive's table of contents (from the head of the
/// object) and the target's roles, read side by side.
pub async fn preflight(
    storage: &Arc<dyn Storage>,
    key: &str,
    decode: Decode,
    target: &PgTarget,
    privileges: Privileges,
) -> anyhow::Result<Vec<Entry>> {
    let (entries, existing) = tokio::join!(
        archive_entries(storage, key, decode, &target.tools, target.redactor.clone()),
        existing_roles(target)
    );
    // In this order, so that the same failure always gets the same message.
    let entries = entries?;
    check_roles(&entries, privileges, &existing?)?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd as _;

    /// A side whose reader went away (pg_restore exited after the TOC) never disturbs the
    /// main stream.
    #[test]
    fn tee_survives_a_closed_side() {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two fds we then own.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (reader, writer) = unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        drop(reader);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut tee = HeadTee::new(std::io::Cursor::new(data.clone()), Some(writer));
        let mut out = Vec::new();
        tee.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert!(tee.side.is_none());
    }
}
