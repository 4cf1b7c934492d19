//! Every temp path backhaul creates goes through here: directories 0700, files 0600, set
//! explicitly at creation and again after it, so neither the umask nor a library default can
//! make a dump, a spool or a decoded artifact readable by another local user.
//!
//! Temp names are `backhaul-<kind>-<pid>-<space>-<unique>`: the pid lets a later run tell
//! what a killed run left behind (see [`sweep`]) from what a live one is still using. A pid
//! means something only in its own pid namespace on its own boot, which `<space>` names: a
//! work dir shared by containers or hosts (EFS) must not lose a live run's files to another
//! container's sweep.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const PREFIX: &str = "backhaul-";
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// A private directory removed (with everything in it) when dropped.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
    kept: bool,
}

impl PrivateDir {
    /// A new private directory in `$TMPDIR`.
    pub fn new(kind: &str) -> io::Result<PrivateDir> {
        PrivateDir::new_in(&std::env::temp_dir(), kind)
    }

    /// A new private directory in `base`, named after `kind` and our pid.
    pub fn new_in(base: &Path, kind: &str) -> io::Result<PrivateDir> {
        let path = unique_create(base, kind, create_dir)?;
        Ok(PrivateDir { path, kept: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory now, reporting a failure that `Drop` would swallow.
    pub fn close(mut self) -> io::Result<()> {
        self.kept = true;
        std::fs::remove_dir_all(&self.path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Creates one directory, 0700. Fails if `path` exists (a planted directory or link is never
/// used).
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
}

/// Creates `path` and any missing parents, each 0700; existing ones are left as they are.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        r => r,
    }
}

/// Creates a new file, 0600, open for reading and writing. Fails if `path` exists.
pub fn create_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    // The umask can only have removed bits; this also restores any it took from the owner.
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// A 0600 file in `$TMPDIR` that no path leads to: unlinked as soon as it is created (a kill
/// in between leaves a name [`sweep`] recognises).
pub fn anonymous_file(kind: &str) -> io::Result<File> {
    let mut file = None;
    let path = unique_create(&std::env::temp_dir(), kind, |p| {
        file = Some(create_file(p)?);
        Ok(())
    })?;
    std::fs::remove_file(&path)?;
    Ok(file.expect("created above"))
}

/// Tries fresh names until `create` (which must fail on an existing path) succeeds.
fn unique_create(
    base: &Path,
    kind: &str,
    mut create: impl FnMut(&Path) -> io::Result<()>,
) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    for _ in 0..100 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let space = pid_space();
        let path = base.join(format!("{PREFIX}{kind}-{pid}-{space}-{n:x}{nanos:08x}"));
        match create(&path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
            Ok(()) => return Ok(path),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free temp name in {}", base.display()),
    ))
}

/// Where temp paths may be: `$TMPDIR` and the work dir, if one is set.
pub fn temp_dirs(work_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = vec![std::env::temp_dir()];
    dirs.extend(work_dir.map(Path::to_path_buf));
    dirs
}

/// Where our pids mean something: this boot of this machine (`boot_id`) and our pid namespace,
/// as 8 hex digits (FNV-1a: stable across backhaul versions, unlike std's hasher).
fn pid_space() -> &'static str {
    static SPACE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SPACE.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let ns = std::fs::read_link("/proc/self/ns/pid").unwrap_or_default();
        let mut h: u32 = 0x811c_9dc5;
        for b in boot.trim().bytes().chain(ns.to_string_lossy().bytes()) {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        format!("{h:08x}")
    })
}

/// The pid and pid space in a name made by [`unique_create`].
fn owner(name: &str) -> Option<(i32, &str)> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.rsplitn(4, '-');
    let (_unique, space, pid, kind) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if kind.is_empty() || space.len() != 8 {
        return None;
    }
    Some((pid.parse().ok().filter(|p| *p > 0)?, space))
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists; nothing is sent.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// What [`sweep`] found.
#[derive(Debug, Default)]
pub struct Swept {
    pub removed: Vec<PathBuf>,
    pub failed: Vec<(PathBuf, io::Error)>,
}

/// Removes the temp paths in `dirs` that a backhaul run of ours left when it was killed:
/// named by us, owned by our user, from our pid space, and whose pid no longer runs. Paths of
/// live runs, of other users and of other containers or hosts are left alone.
pub fn sweep(dirs: &[PathBuf]) -> Swept {
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    let me = std::process::id() as i32;
    let mut out = Swept::default();
    let mut seen = std::collections::BTreeSet::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(owner)
                .filter(|(_, space)| *space == pid_space())
                .map(|(pid, _)| pid)
            else {
                continue;
            };
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.uid() != uid || pid == me || alive(pid) || !seen.insert(path.clone()) {
                continue;
            }
            let removed = if meta.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => out.removed.push(path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => out.failed.push((path, e)),
            }
        }
    }
    out
}

/// Sweeps `dirs` and says what happened: one line for what was removed, one warning per path
/// that could not be. Returns what could not be removed.
pub fn sweep_and_log(dirs: &[PathBuf]) -> Vec<(PathBuf, io::Error)> {
    let swept = sweep(dirs);
    if !swept.removed.is_empty() {
        let paths: Vec<String> = swept
            .removed
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        tracing::info!(
            "removed {} temp path(s) left by killed backhaul runs: {}",
            paths.len(),
            paths.join(", ")
        );
    }
    for (path, e) in &swept.failed {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a temp path left by a killed backhaul run");
    }
    swept.failed
}

/// Bytes available to this user in the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Whether files in `dir` give punched ranges back ([`punch`]): 1 MiB written, 512 KiB
/// punched, and the file must take less space after. A spool that cannot punch holds every
/// byte of a file until its end.
pub fn can_punch(dir: &Path) -> io::Result<bool> {
    use std::io::Write;
    let probe = PrivateDir::new_in(dir, "punch-probe")?;
    let path = probe.path().join("probe");
    let mut f = create_file(&path)?;
    f.write_all(&vec![0x5a; 1 << 20])?;
    f.sync_all()?;
    let before = f.metadata()?.blocks();
    punch(&f, 0, 512 << 10);
    let after = f.metadata()?.blocks();
    drop(f);
    probe.close()?;
    Ok(after < before)
}

/// Gives the whole pages inside `[start, end)` of `file` back to the file system (the size
/// stays). Best effort: a file system without hole punching just keeps the bytes.
pub fn punch(file: &File, start: u64, end: u64) {
    const PAGE: u64 = 4096;
    let (from, to) = (start.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
    if to > from {
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate(2) on a file we own; no memory is passed.
        unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                from as libc::off_t,
                (to - from) as libc::off_t,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    /// Runs `f` with a umask that would make everything world-readable and -writable.
    fn with_open_umask<T>(f: impl FnOnce() -> T) -> T {
        // SAFETY: umask(2) only swaps the process's mask; restored below.
        let old = unsafe { libc::umask(0) };
        let r = f();
        unsafe { libc::umask(old) };
        r
    }

    #[test]
    fn modes_are_private_whatever_the_umask() {
        let base = tempfile::tempdir().unwrap();
        with_open_umask(|| {
            let dir = PrivateDir::new_in(base.path(), "t").unwrap();
            assert_eq!(mode(dir.path()), 0o700);
            let f = dir.path().join("f");
            create_file(&f).unwrap();
            assert_eq!(mode(&f), 0o600);
            let deep = dir.path().join("a/b/c");
            create_dir_all(&deep).unwrap();
            for p in ["a", "a/b", "a/b/c"] {
                assert_eq!(mode(&dir.path().join(p)), 0o700, "{p}");
            }
            let anon = anonymous_file("t").unwrap();
            assert_eq!(anon.metadata().unwrap().mode() & 0o777, 0o600);
        });
    }

    #[test]
    fn names_carry_the_pid_and_are_never_reused() {
        let base = tempfile::tempdir().unwrap();
        let a = PrivateDir::new_in(base.path(), "x-y").unwrap();
        let b = PrivateDir::new_in(base.path(), "x-y").unwrap();
        assert_ne!(a.path(), b.path());
        let name = a.path().file_name().unwrap().to_str().unwrap();
        assert_eq!(owner(name), Some((std::process::id() as i32, pid_space())));
        assert!(create_file(&a.path().join("f")).is_ok());
        assert!(create_file(&a.path().join("f")).is_err(), "existing file");
        assert!(create_dir(b.path()).is_err(), "existing dir");
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn sweep_removes_only_dead_runs_paths() {
        let base = tempfile::tempdir().unwrap();
        // A pid that ran and is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let space = pid_space();
        let gone = base
            .path()
            .join(format!("backhaul-restore-{dead}-{space}-1"));
        create_dir(&gone).unwrap();
        create_file(&gone.join("archive.dump")).unwrap();
        let gone_file = base
            .path()
            .join(format!("backhaul-verify-{dead}-{space}-2"));
        create_file(&gone_file).unwrap();
        let live = PrivateDir::new_in(base.path(), "restore").unwrap();
        let init = base.path().join(format!("backhaul-restore-1-{space}-3"));
        create_dir(&init).unwrap();
        // Another container's or host's run: its pid means nothing here.
        let elsewhere = base
            .path()
            .join(format!("backhaul-restore-{dead}-0badf00d-4"));
        create_dir(&elsewhere).unwrap();
        let foreign = base.path().join(format!("other-{dead}-{space}-1"));
        create_dir(&foreign).unwrap();
        let swept = sweep(&[base.path().to_path_buf()]);
        let mut removed = swept.removed.clone();
        removed.sort();
        assert_eq!(removed, vec![gone.clone(), gone_file.clone()]);
        assert!(swept.failed.is_empty());
        for kept in [live.path(), &init, &elsewhere, &foreign] {
            assert!(kept.exists(), "{kept:?}");
        }
    }

    #[test]
    fn punching_gives_space_back_here() {
        let base = tempfile::tempdir().unwrap();
        assert!(can_punch(base.path()).unwrap());
        assert_eq!(
            std::fs::read_dir(base.path()).unwrap().count(),
            0,
            "probe removed"
        );
    }

    #[test]
    fn owner_parses_only_our_names() {
        assert_eq!(
            owner("backhaul-mongo-restore-123-0badf00d-abc"),
            Some((123, "0badf00d"))
        );
        assert_eq!(owner("backhaul-restore-123-abc"), None);
        assert_eq!(owner("backhaul-restore-abc"), None);
        assert_eq!(owner("backhaul-123-0badf00d-abc"), None);
        assert_eq!(owner("other-x-123-0badf00d-abc"), None);
    }
}
