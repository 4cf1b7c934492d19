//! The MongoDB Database Tools: finding mongodump and mongorestore, handing them the connection
//! through a private `--config` file, turning mongodump's output into one artifact — either a
//! dump tree zipped on the fly (`zip`) or its gzipped archive stream (`archive`) — and running
//! mongorestore on a verified dump.
//!
//! The URI holds the password, so it never goes into argv: the real tools would show it in
//! `ps`. It is written to a 0600 temp file that lives exactly as long as the child.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tempfile::{NamedTempFile, TempDir};

use crate::config::mongo::MongoConn;
use crate::secret::Redactor;
use crate::source::child::{self, ChildError, ChildProc};

#[derive(Debug, thiserror::Error)]
pub enum MongoError {
    #[error(
        "no mongodump found on PATH: install the MongoDB Database Tools or set MONGODUMP_PATH"
    )]
    NoMongodump,
    #[error("MONGODUMP_PATH {0} does not exist or is not executable")]
    BadPath(String),
    #[error("cannot read the version of {path}: {message}")]
    Version { path: String, message: String },
    #[error("no mongorestore found: install the MongoDB Database Tools or set MONGORESTORE_PATH")]
    NoMongorestore,
    #[error("MONGORESTORE_PATH {0} does not exist or is not executable")]
    BadRestorePath(String),
    #[error("writing the MongoDB tools' private --config file: {0}")]
    ConfigFile(io::Error),
    #[error("cannot create a temp dir in {dir} (BACKUP_WORK_DIR): {source}")]
    WorkDir { dir: String, source: io::Error },
    #[error("only {free_mib} MiB free in {dir}, need at least {min_mib} MiB for the mongodump tree: point BACKUP_WORK_DIR at a larger volume (or lower BACKUP_MIN_FREE_MIB)")]
    LowSpace {
        dir: String,
        free_mib: u64,
        min_mib: u64,
    },
    #[error("mongodump wrote nothing for database {0}")]
    Empty(String),
    #[error(transparent)]
    Child(#[from] ChildError),
}

impl MongoError {
    /// A missing or broken binary is a setting to fix, not a transient failure.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            MongoError::NoMongodump
                | MongoError::BadPath(_)
                | MongoError::NoMongorestore
                | MongoError::BadRestorePath(_)
        )
    }
}

#[derive(Debug, Clone)]
pub struct MongoTools {
    pub mongodump: PathBuf,
    pub version: String,
}

impl MongoTools {
    /// `MONGODUMP_PATH` if given, else the first mongodump on PATH.
    pub async fn locate(explicit: Option<&Path>) -> Result<MongoTools, MongoError> {
        let path = match explicit {
            Some(p) if is_executable(p) => p.to_path_buf(),
            Some(p) => return Err(MongoError::BadPath(p.display().to_string())),
            None => on_path("mongodump").ok_or(MongoError::NoMongodump)?,
        };
        let version = tool_version(&path).await?;
        Ok(MongoTools {
            mongodump: path,
            version,
        })
    }
}

/// `MONGORESTORE_PATH` if given, else the mongorestore beside an explicit `MONGODUMP_PATH`
/// (the tools ship together), else the first one on PATH.
pub fn locate_mongorestore(
    explicit: Option<&Path>,
    mongodump: Option<&Path>,
) -> Result<PathBuf, MongoError> {
    if let Some(p) = explicit {
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(MongoError::BadRestorePath(p.display().to_string()))
        };
    }
    mongodump
        .and_then(Path::parent)
        .map(|d| d.join("mongorestore"))
        .filter(|p| is_executable(p))
        .or_else(|| on_path("mongorestore"))
        .ok_or(MongoError::NoMongorestore)
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Parses `mongodump version: 100.9.4` (first line of `--version`) into "100.9.4".
pub fn parse_tool_version(out: &str) -> Option<String> {
    out.lines()
        .next()?
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
}

async fn tool_version(path: &Path) -> Result<String, MongoError> {
    let out = child::command(path)
        .arg("--version")
        .stdout(Stdio::piped())
        .output()
        .await
        .map_err(|e| MongoError::Version {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_tool_version(&text).ok_or_else(|| MongoError::Version {
        path: path.display().to_string(),
        message: format!("unexpected output {:?}", text.trim()),
    })
}

/// Registers the URI and its password (both encoded and decoded) as secrets.
pub fn add_secrets(conn: &MongoConn, redactor: &mut Redactor) {
    redactor.add(&conn.uri);
    if let Some(pw) = conn.password() {
        redactor.add(&pw);
    }
}

/// A YAML double-quoted scalar: only `"` and `\` need escaping in a URI.
fn yaml_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Writes `uri: "…"` to a temp file that only we can read. Keep the returned file alive until
/// the child has exited: dropping it deletes it.
pub fn write_config(conn: &MongoConn) -> Result<NamedTempFile, MongoError> {
    let mut f = tempfile::Builder::new()
        .prefix("backhaul-mongo-config-")
        .tempfile()
        .map_err(MongoError::ConfigFile)?;
    // tempfile already creates 0600; forcing it guards against a different umask or a future
    // tempfile default, since mongodump would otherwise read a world-readable password.
    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o600))
        .map_err(MongoError::ConfigFile)?;
    writeln!(f, "uri: {}", yaml_quote(conn.uri.expose())).map_err(MongoError::ConfigFile)?;
    f.flush().map_err(MongoError::ConfigFile)?;
    Ok(f)
}

/// mongodump with the connection and database set; the caller adds the output mode.
fn dump_command(
    tools: &MongoTools,
    config: &Path,
    database: &str,
    extra_args: &[String],
) -> tokio::process::Command {
    let mut cmd = child::command(&tools.mongodump);
    cmd.arg("--config").arg(config).arg("--db").arg(database);
    cmd.args(extra_args);
    cmd
}

/// A running `mongodump --archive --gzip` and the config file it reads (kept until it exits).
pub struct ArchiveDump {
    pub child: ChildProc,
    pub config: NamedTempFile,
}

/// Starts `mongodump --archive --gzip` writing the archive to stdout.
pub fn spawn_archive(
    tools: &MongoTools,
    conn: &MongoConn,
    database: &str,
    extra_args: &[String],
    redactor: Redactor,
) -> Result<ArchiveDump, MongoError> {
    let config = write_config(conn)?;
    let mut cmd = dump_command(tools, config.path(), database, extra_args);
    cmd.args(["--archive", "--gzip"]).stdout(Stdio::piped());
    let child = ChildProc::spawn("mongodump", cmd, redactor)?;
    Ok(ArchiveDump { child, config })
}

/// Fails when `dir`'s file system has less than `min_mib` MiB available: a full disk halfway
/// through mongodump is a slow, confusing failure; this one is immediate and names the fix.
pub fn check_free_space(dir: &Path, min_mib: u64) -> Result<(), MongoError> {
    let free = free_bytes(dir).map_err(|source| MongoError::WorkDir {
        dir: dir.display().to_string(),
        source,
    })?;
    let free_mib = free >> 20;
    if free_mib < min_mib {
        return Err(MongoError::LowSpace {
            dir: dir.display().to_string(),
            free_mib,
            min_mib,
        });
    }
    Ok(())
}

fn free_bytes(dir: &Path) -> io::Result<u64> {
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

/// A temp dir inside `work_dir` that only we can enter (0700): dumps hold the data in clear.
/// Removed when the `TempDir` drops.
pub fn private_dir(work_dir: &Path, prefix: &str) -> Result<TempDir, MongoError> {
    let err = |source| MongoError::WorkDir {
        dir: work_dir.display().to_string(),
        source,
    };
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(work_dir)
        .map_err(err)?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    Ok(dir)
}

/// Runs `mongodump --out <private temp dir>` to completion and returns the dir holding
/// `<db>/<collection>.bson|.metadata.json`. The dir is removed when the `TempDir` drops
/// (success, failure, or the caller's future being cancelled).
pub async fn dump_to_dir(
    tools: &MongoTools,
    conn: &MongoConn,
    database: &str,
    extra_args: &[String],
    work_dir: &Path,
    redactor: Redactor,
) -> Result<TempDir, MongoError> {
    let dir = private_dir(work_dir, "backhaul-mongo-")?;
    let config = write_config(conn)?;
    let mut cmd = dump_command(tools, config.path(), database, extra_args);
    cmd.arg("--out").arg(dir.path());
    let child = ChildProc::spawn("mongodump", cmd, redactor)?;
    let waited = child.wait().await;
    drop(config);
    waited?;
    if !has_files(&dir.path().join(database)) {
        return Err(MongoError::Empty(database.to_string()));
    }
    Ok(dir)
}

/// Real mongodump exits 0 and writes nothing for a database that does not exist.
fn has_files(dir: &Path) -> bool {
    walk(dir).map(|files| !files.is_empty()).unwrap_or(false)
}

/// Every file under `root`, as (path relative to root with `/` separators, absolute path),
/// sorted, so the zip's entry order does not depend on the file system.
pub fn walk(root: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .map_err(io::Error::other)?
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Streams every file under `root` into a zip written to `sink` (which need not seek), and
/// returns the total size of the files. Files are copied through a buffer, never read whole.
pub fn zip_tree(root: &Path, sink: impl Write) -> io::Result<u64> {
    use zip::write::SimpleFileOptions;
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        // Sizes are unknown when each local header is written (streaming): zip64 fields keep
        // entries over 4 GiB valid.
        .large_file(true);
    let mut zip = zip::ZipWriter::new_stream(sink);
    let mut raw = 0u64;
    for (name, path) in walk(root)? {
        zip.start_file(name, options).map_err(io::Error::other)?;
        let mut file = std::fs::File::open(&path)?;
        raw += crate::pipeline::copy_counting(&mut file, &mut zip)?;
    }
    zip.finish().map_err(io::Error::other)?;
    Ok(raw)
}

/// What mongorestore reads: a dump tree (`<dir>/<db>/<coll>.bson`) or a gzipped archive file.
pub enum RestoreSource<'a> {
    Dir(&'a Path),
    ArchiveGz(&'a Path),
}

/// How mongorestore applies a dump of database `from` to database `to`.
pub struct MongoRestoreOpts<'a> {
    pub from: &'a str,
    pub to: &'a str,
    /// `--drop`: replace each collection the dump holds (backhaul's `--clean`).
    pub drop: bool,
}

/// An nsInclude/nsFrom pattern matching `s` literally: `*`, `$` and `\` are special there.
fn ns_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '$' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The mongorestore arguments after `--config`. `--stopOnError` because mongorestore otherwise
/// exits 0 after skipping documents whose `_id` already exists, and a restore that silently
/// kept old data must not report success.
pub fn restore_args(source: &RestoreSource, opts: &MongoRestoreOpts) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    match source {
        RestoreSource::Dir(d) => {
            args.push("--dir".into());
            args.push(d.as_os_str().to_owned());
        }
        RestoreSource::ArchiveGz(f) => {
            let mut a = std::ffi::OsString::from("--archive=");
            a.push(f.as_os_str());
            args.push(a);
            args.push("--gzip".into());
        }
    }
    let from = ns_escape(opts.from);
    args.push(format!("--nsInclude={from}.*").into());
    if opts.from != opts.to {
        args.push(format!("--nsFrom={from}.$coll$").into());
        args.push(format!("--nsTo={}.$coll$", ns_escape(opts.to)).into());
    }
    if opts.drop {
        args.push("--drop".into());
    }
    args.push("--stopOnError".into());
    args
}

/// Runs mongorestore to completion and returns its (redacted) stderr tail. The config file with
/// the URI is removed once the child has exited, on every path.
pub async fn run_restore(
    mongorestore: &Path,
    conn: &MongoConn,
    source: &RestoreSource<'_>,
    opts: &MongoRestoreOpts<'_>,
    redactor: Redactor,
) -> Result<Vec<String>, MongoError> {
    let config = write_config(conn)?;
    let mut cmd = child::command(mongorestore);
    cmd.arg("--config")
        .arg(config.path())
        .args(restore_args(source, opts));
    let child = ChildProc::spawn("mongorestore", cmd, redactor)?;
    let waited = child.wait().await;
    drop(config);
    Ok(waited?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_tool_version("mongodump version: 100.9.4\ngit version: abc\n"),
            Some("100.9.4".into())
        );
        assert_eq!(parse_tool_version("garbage"), None);
    }

    #[test]
    fn yaml_quoting_escapes_quotes_and_backslashes() {
        assert_eq!(
            yaml_quote(r#"mongodb://u:a"b\c@h/"#),
            r#""mongodb://u:a\"b\\c@h/""#
        );
    }

    #[test]
    fn restore_args_rename_and_escape() {
        let args = restore_args(
            &RestoreSource::Dir(Path::new("/t/dump")),
            &MongoRestoreOpts {
                from: "shop",
                to: "sh*p2",
                drop: true,
            },
        );
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            args,
            vec![
                "--dir",
                "/t/dump",
                "--nsInclude=shop.*",
                "--nsFrom=shop.$coll$",
                "--nsTo=sh\\*p2.$coll$",
                "--drop",
                "--stopOnError"
            ]
        );
    }

    #[test]
    fn zip_tree_holds_every_file_sorted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shop")).unwrap();
        std::fs::write(dir.path().join("shop/b.bson"), vec![7u8; 100_000]).unwrap();
        std::fs::write(dir.path().join("shop/a.metadata.json"), b"{}").unwrap();
        let mut out = Vec::new();
        let raw = zip_tree(dir.path(), &mut out).unwrap();
        assert_eq!(raw, 100_002);
        let mut z = zip::ZipArchive::new(io::Cursor::new(out)).unwrap();
        let names: Vec<String> = z.file_names().map(|n| n.unwrap().into_owned()).collect();
        assert_eq!(names, vec!["shop/a.metadata.json", "shop/b.bson"]);
        let mut b = Vec::new();
        z.by_name("shop/b.bson")
            .unwrap()
            .read_to_end(&mut b)
            .unwrap();
        assert_eq!(b, vec![7u8; 100_000]);
    }
}
