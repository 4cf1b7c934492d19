//! pg_dump, pg_restore and psql: finding the right binary, checking versions, and building
//! their commands so the password travels in `PGPASSWORD`, never in argv.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::config::postgres::PgConn;
use crate::config::PgCompression;
use crate::secret::Redactor;
use crate::source::child::{self, ChildError, ChildProc};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("no pg_dump found on PATH or under /usr/lib/postgresql/*/bin: install the PostgreSQL client or set PG_DUMP_PATH")]
    NoPgDump,
    #[error("PG_DUMP_PATH {0} does not exist or is not executable")]
    BadPath(String),
    #[error("cannot read the version of {path}: {message}")]
    Version { path: String, message: String },
    #[error("pg_dump {client} is older than the server ({server}): pg_dump must be at least version {major}; install postgresql-client-{major} or set PG_DUMP_PATH")]
    TooOld {
        client: String,
        server: String,
        major: u32,
    },
    #[error("unexpected answer to {what}: {answer:?}")]
    Unexpected { what: &'static str, answer: String },
    #[error(transparent)]
    Child(#[from] ChildError),
}

impl PgError {
    /// Mismatched tools and missing binaries are settings to fix, not transient failures.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            PgError::NoPgDump | PgError::BadPath(_) | PgError::TooOld { .. }
        )
    }
}

/// A PostgreSQL client tool set (pg_dump, pg_restore, psql from one bin directory).
#[derive(Debug, Clone)]
pub struct PgTools {
    pub pg_dump: PathBuf,
    pub version: String,
    pub major: u32,
}

impl PgTools {
    /// `PG_DUMP_PATH` if given, else the newest pg_dump on PATH or under /usr/lib/postgresql.
    pub async fn locate(explicit: Option<&Path>) -> Result<PgTools, PgError> {
        if let Some(p) = explicit {
            if !is_executable(p) {
                return Err(PgError::BadPath(p.display().to_string()));
            }
            let (version, major) = tool_version(p).await?;
            return Ok(PgTools {
                pg_dump: p.to_path_buf(),
                version,
                major,
            });
        }
        let mut best: Option<PgTools> = None;
        for cand in candidates("pg_dump") {
            if let Ok((version, major)) = tool_version(&cand).await {
                if best.as_ref().is_none_or(|b| major > b.major) {
                    best = Some(PgTools {
                        pg_dump: cand,
                        version,
                        major,
                    });
                }
            }
        }
        best.ok_or(PgError::NoPgDump)
    }

    /// A sibling tool from the same installation (pg_restore, psql), falling back to PATH.
    pub fn sibling(&self, name: &str) -> PathBuf {
        let beside = self.pg_dump.with_file_name(name);
        if is_executable(&beside) {
            return beside;
        }
        candidates(name)
            .into_iter()
            .next()
            .unwrap_or_else(|| PathBuf::from(name))
    }

    /// Fails with a clear message when pg_dump would refuse this server anyway.
    pub fn check_server(&self, server: &ServerVersion) -> Result<(), PgError> {
        if server.major > self.major {
            return Err(PgError::TooOld {
                client: self.version.clone(),
                server: server.text.clone(),
                major: server.major,
            });
        }
        Ok(())
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Every `name` on PATH (in order), then under /usr/lib/postgresql/*/bin, newest major first.
fn candidates(name: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .filter(|p| is_executable(p))
                .collect()
        })
        .unwrap_or_default();
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin").join(name);
            is_executable(&p).then_some((major, p))
        })
        .collect();
    versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
    out.extend(versioned.into_iter().map(|(_, p)| p));
    out
}

/// Parses `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` into ("15.18", 15).
pub fn parse_tool_version(out: &str) -> Option<(String, u32)> {
    let v = out
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let major = v.split('.').next()?.parse().ok()?;
    Some((v.to_string(), major))
}

async fn tool_version(path: &Path) -> Result<(String, u32), PgError> {
    let mut cmd = child::command(path);
    cmd.arg("--version").stdout(Stdio::piped());
    let out = child::output(cmd).await.map_err(|e| PgError::Version {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_tool_version(&text).ok_or_else(|| PgError::Version {
        path: path.display().to_string(),
        message: format!("unexpected output {:?}", text.trim()),
    })
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServerVersion {
    pub major: u32,
    pub text: String,
}

/// Sets the connection on a libpq tool: URL without password in argv, password in env.
pub fn connect_args(cmd: &mut tokio::process::Command, conn: &PgConn, database: &str) {
    cmd.arg(format!("--dbname={}", conn.url_for(database)));
    cmd.arg("--no-password");
    if let Some(p) = &conn.password {
        cmd.env("PGPASSWORD", p.expose());
    }
    cmd.env("PGAPPNAME", "backhaul");
    if !conn.params.iter().any(|(k, _)| k == "connect_timeout") {
        cmd.env("PGCONNECT_TIMEOUT", "30");
    }
}

/// psql answering for a program: no psqlrc, unaligned rows without headers or footers, quiet,
/// stopping at the first error.
pub const ANSWER_FLAGS: [&str; 6] = ["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"];

/// Runs one SQL query through psql and returns its unaligned output.
pub async fn psql_query(
    tools: &PgTools,
    conn: &PgConn,
    database: &str,
    sql: &str,
    redactor: &Redactor,
) -> Result<String, PgError> {
    let psql = tools.sibling("psql");
    let mut cmd = child::command(&psql);
    cmd.args(ANSWER_FLAGS).args(["-c", sql]);
    connect_args(&mut cmd, conn, database);
    cmd.stdout(Stdio::piped());
    let out = child::output(cmd)
        .await
        .map_err(|source| ChildError::Spawn {
            tool: "psql".into(),
            path: psql.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<String> = err
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| redactor.redact(l))
            .collect();
        return Err(ChildError::Failed {
            tool: "psql".into(),
            status: format!("exited with {}", out.status),
            tail,
        }
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub async fn server_version(
    tools: &PgTools,
    conn: &PgConn,
    database: &str,
    redactor: &Redactor,
) -> Result<ServerVersion, PgError> {
    let out = psql_query(
        tools,
        conn,
        database,
        "select current_setting('server_version_num') || ' ' || current_setting('server_version')",
        redactor,
    )
    .await?;
    let (num, text) = out.split_once(' ').unwrap_or((&out, &out));
    let num: u32 = num.parse().map_err(|_| PgError::Version {
        path: "server".into(),
        message: format!("unexpected {out:?}"),
    })?;
    // server_version_num is MMmmpp since PostgreSQL 10 (150018 = 15.18); 90624 (9.6) gives 9.
    let major = num / 10_000;
    Ok(ServerVersion {
        major,
        text: text.to_string(),
    })
}

/// Why a `--pg-dump-arg` cannot go with `--jobs` above 1: backhaul chooses the format, the
/// output, the parallelism and the compression of a directory dump, and needs its snapshot
/// synchronized. Short options count attached (`-Fd`, `-j4`) and separate.
pub fn refused_dir_dump_arg(args: &[String]) -> Option<String> {
    const LONG: [&str; 7] = [
        "--format",
        "--file",
        "--jobs",
        "--compress",
        "--no-sync",
        "--no-synchronized-snapshots",
        "--compression",
    ];
    args.iter()
        .find(|a| {
            let name = a.split('=').next().unwrap_or(a);
            LONG.contains(&name)
                || (!a.starts_with("--")
                    && ["-F", "-f", "-j", "-Z"].iter().any(|s| a.starts_with(s)))
        })
        .map(|a| {
            format!("{a} is not allowed with PG_JOBS above 1: backhaul runs pg_dump --format=directory --jobs=N --compress=0 --no-sync into its own spool")
        })
}

/// Starts `pg_dump -Fd -j N` writing into `dir` (empty, created by us): uncompressed (we
/// compress each file as it grows) and without its final fsync (each file is read and
/// uploaded while it is written; nothing needs it on disk).
pub fn spawn_dir_dump(
    tools: &PgTools,
    conn: &PgConn,
    database: &str,
    dir: &std::path::Path,
    jobs: u32,
    extra_args: &[String],
    redactor: Redactor,
) -> Result<ChildProc, PgError> {
    let mut cmd = child::command(&tools.pg_dump);
    cmd.arg("--format=directory")
        .arg(format!("--jobs={jobs}"))
        .arg("--compress=0")
        .arg("--no-sync")
        .arg(format!("--file={}", dir.display()));
    cmd.args(extra_args);
    connect_args(&mut cmd, conn, database);
    Ok(ChildProc::spawn("pg_dump", cmd, redactor)?)
}

/// Starts `pg_dump -Fc` writing the archive to stdout.
pub fn spawn_dump(
    tools: &PgTools,
    conn: &PgConn,
    database: &str,
    compression: PgCompression,
    extra_args: &[String],
    redactor: Redactor,
) -> Result<ChildProc, PgError> {
    let mut cmd = child::command(&tools.pg_dump);
    cmd.arg("--format=custom");
    match compression {
        // We compress ourselves (faster, multi-threaded); pg_dump must not spend CPU on it.
        PgCompression::Zstd | PgCompression::None => {
            cmd.arg("--compress=0");
        }
        PgCompression::Pg => {}
    }
    cmd.args(extra_args);
    connect_args(&mut cmd, conn, database);
    cmd.stdout(Stdio::piped());
    Ok(ChildProc::spawn("pg_dump", cmd, redactor)?)
}

/// One pg_restore run: what it reads and which entries it restores.
#[derive(Debug, Clone, Copy)]
pub struct RestoreRun<'a> {
    /// Names the run in errors (`pg_restore (post-data)`).
    pub label: &'a str,
    /// The archive file; `None` reads it from stdin.
    pub file: Option<&'a Path>,
    /// `--use-list`: only these entries, in the file's order.
    pub list: Option<&'a Path>,
}

impl RestoreRun<'_> {
    pub fn stdin() -> RestoreRun<'static> {
        RestoreRun {
            label: "pg_restore",
            file: None,
            list: None,
        }
    }
}

/// Starts `pg_restore`. Parallel (`--jobs`) when `opts.jobs` asks for it and the archive is a
/// file; otherwise in one transaction.
pub fn spawn_restore(
    tools: &PgTools,
    conn: &PgConn,
    database: &str,
    opts: &RestoreOpts,
    run: RestoreRun<'_>,
    redactor: Redactor,
) -> Result<ChildProc, PgError> {
    let mut cmd = child::command(&tools.sibling("pg_restore"));
    cmd.arg("--exit-on-error");
    if opts.no_owner {
        cmd.arg("--no-owner");
    }
    if opts.no_acl {
        cmd.arg("--no-acl");
    }
    if opts.clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    match (opts.jobs, run.file) {
        (Some(j), Some(_)) if j > 1 => {
            cmd.arg(format!("--jobs={j}"));
        }
        // One transaction: if we stop feeding it (checksum mismatch), nothing is committed.
        _ => {
            cmd.arg("--single-transaction");
        }
    }
    if let Some(list) = run.list {
        cmd.arg("--use-list").arg(list);
    }
    connect_args(&mut cmd, conn, database);
    match run.file {
        Some(f) => {
            cmd.arg(f);
        }
        None => {
            cmd.stdin(Stdio::piped());
        }
    }
    Ok(ChildProc::spawn(run.label, cmd, redactor)?)
}

/// Starts `pg_restore --list` reading an archive from stdin: it parses the header and table of
/// contents and exits 0 only for a readable custom-format archive. Needs no server.
pub fn spawn_list(tools: &PgTools, redactor: Redactor) -> Result<ChildProc, PgError> {
    let mut cmd = child::command(&tools.sibling("pg_restore"));
    cmd.arg("--list").stdin(Stdio::piped());
    Ok(ChildProc::spawn("pg_restore --list", cmd, redactor)?)
}

/// The TOC sections that hold no data: every definition, owner and ACL (large objects
/// included), as [`crate::source::pg_toc`] reads them.
const SCHEMA_SECTIONS: [&str; 2] = ["--section=pre-data", "--section=post-data"];

/// Starts `pg_restore` printing an archive's schema script (from stdin) on stdout. It needs
/// only the archive's head and exits as soon as it has read the table of contents.
pub fn spawn_schema_script(tools: &PgTools, redactor: Redactor) -> Result<ChildProc, PgError> {
    let mut cmd = child::command(&tools.sibling("pg_restore"));
    cmd.args(SCHEMA_SECTIONS).args(["--file=-"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    Ok(ChildProc::spawn("pg_restore", cmd, redactor)?)
}

/// As [`spawn_schema_script`], of the directory-format dump in `dir`, of which it reads only
/// `toc.dat` (the schema sections hold no data).
pub fn spawn_dir_schema_script(
    tools: &PgTools,
    dir: &std::path::Path,
    redactor: Redactor,
) -> Result<ChildProc, PgError> {
    let mut cmd = child::command(&tools.sibling("pg_restore"));
    cmd.args(SCHEMA_SECTIONS)
        .args(["--file=-", "--format=directory"])
        .arg(dir);
    cmd.stdout(Stdio::piped());
    Ok(ChildProc::spawn("pg_restore", cmd, redactor)?)
}

/// Starts `pg_dump` printing a live database's schema script, in the same form.
pub fn spawn_schema_dump(
    tools: &PgTools,
    conn: &PgConn,
    database: &str,
    redactor: Redactor,
) -> Result<ChildProc, PgError> {
    let mut cmd = child::command(&tools.pg_dump);
    cmd.args(SCHEMA_SECTIONS);
    connect_args(&mut cmd, conn, database);
    cmd.stdout(Stdio::piped());
    Ok(ChildProc::spawn("pg_dump", cmd, redactor)?)
}

/// Starts `pg_dumpall --globals-only` (roles, memberships, role settings, tablespaces) on
/// stdout; `role_passwords: false` adds `--no-role-passwords` for servers that forbid
/// reading pg_authid.
pub fn spawn_globals_dump(
    tools: &PgTools,
    conn: &PgConn,
    database: &str,
    role_passwords: bool,
    redactor: Redactor,
) -> Result<ChildProc, PgError> {
    let mut cmd = child::command(&tools.sibling("pg_dumpall"));
    cmd.arg("--globals-only");
    if !role_passwords {
        cmd.arg("--no-role-passwords");
    }
    connect_args(&mut cmd, conn, database);
    cmd.stdout(Stdio::piped());
    Ok(ChildProc::spawn("pg_dumpall", cmd, redactor)?)
}

/// Runs an SQL script through psql, in one transaction, stopping at the first error.
pub async fn psql_script(
    tools: &PgTools,
    conn: &PgConn,
    database: &str,
    script: &str,
    redactor: Redactor,
) -> Result<(), PgError> {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = child::command(&tools.sibling("psql"));
    cmd.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "--single-transaction",
        "-f",
        "-",
    ]);
    connect_args(&mut cmd, conn, database);
    cmd.stdin(Stdio::piped());
    let mut child = ChildProc::spawn("psql", cmd, redactor)?;
    let mut stdin = child.take_stdin().expect("stdin is piped");
    let written = stdin.write_all(script.as_bytes()).await;
    drop(stdin);
    child.wait().await?;
    written.map_err(|source| ChildError::Wait {
        tool: "psql".into(),
        source,
    })?;
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct RestoreOpts {
    pub clean: bool,
    pub jobs: Option<u32>,
    /// `restore --jobs`: the spool's budget in bytes (`None`: sized to the free disk).
    pub spool_budget: Option<u64>,
    /// `--no-owner`: objects belong to the restoring role (opt-in; the default keeps owners).
    pub no_owner: bool,
    /// `--no-acl`: grants and default privileges are not restored (opt-in).
    pub no_acl: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_dump_refuses_what_backhaul_chooses() {
        let refused = |a: &str| refused_dir_dump_arg(&[a.to_string()]);
        for a in [
            "-Fd",
            "-F",
            "--format=custom",
            "-f",
            "-fout",
            "--file=x",
            "-j4",
            "--jobs=2",
            "-Z0",
            "--compress=9",
            "--no-sync",
            "--no-synchronized-snapshots",
        ] {
            assert!(refused(a).is_some_and(|m| m.starts_with(a)), "{a}");
        }
        for a in [
            "--exclude-table=audit_*",
            "-t",
            "--no-owner",
            "--schema=public",
            "-n",
        ] {
            assert_eq!(refused(a), None, "{a}");
        }
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_tool_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(("15.18".into(), 15))
        );
        assert_eq!(
            parse_tool_version("pg_dump (PostgreSQL) 17.2"),
            Some(("17.2".into(), 17))
        );
        assert_eq!(
            parse_tool_version("pg_dump (PostgreSQL) 9.6.24"),
            Some(("9.6.24".into(), 9))
        );
        assert_eq!(parse_tool_version("garbage"), None);
    }
}
