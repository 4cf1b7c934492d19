//! The MongoDB Database Tools: finding mongodump and mongorestore, handing them the connection
//! through a private `--config` file, turning mongodump's output into one artifact — either a
//! dump tree zipped on the fly (`zip`) or its gzipped archive stream (`archive`) — and running
//! mongorestore on a verified dump.
//!
//! The URI holds the password, so it never goes into argv: the real tools would show it in
//! `ps`. It is written to a 0600 temp file that lives exactly as long as the child.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::config::mongo::MongoConn;
use crate::private_fs::PrivateDir;
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
    #[error("{path} is version {version}; backhaul needs the MongoDB Database Tools {MIN_TOOLS_VERSION} or newer (for --config): upgrade them")]
    TooOld { path: String, version: String },
    #[error("no mongorestore found: install the MongoDB Database Tools or set MONGORESTORE_PATH")]
    NoMongorestore,
    #[error("MONGORESTORE_PATH {0} does not exist or is not executable")]
    BadRestorePath(String),
    #[error("handing the connection to the MongoDB tools (--config pipe): {0}")]
    ConfigFile(io::Error),
    #[error("cannot create a temp dir in {dir} (BACKUP_WORK_DIR): {source}")]
    WorkDir { dir: String, source: io::Error },
    #[error("only {free_mib} MiB free in {dir}, need at least {min_mib} MiB for the mongodump tree: point BACKUP_WORK_DIR at a larger volume (or lower BACKUP_MIN_FREE_MIB)")]
    LowSpace {
        dir: String,
        free_mib: u64,
        min_mib: u64,
    },
    #[error("mongodump found no collections in {0}: the database is missing or misspelled (pass --allow-empty / MONGO_ALLOW_EMPTY=true if an empty backup is expected)")]
    Empty(String),
    #[error("{0}: truncated BSON (a document's length runs past the end)")]
    TruncatedBson(String),
    #[error("{0}: neither a .metadata.json naming the collection nor a file name mongodump could have escaped")]
    BadName(String),
    #[error("reading the dump tree: {0}")]
    Tree(io::Error),
    #[error("not a mongodump archive: {0}")]
    BadArchive(String),
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
                | MongoError::TooOld { .. }
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
        let version = checked_version(&path).await?;
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

/// The oldest tools with `--config`, the only way backhaul hands them the password.
pub const MIN_TOOLS_VERSION: &str = "100.3.0";

/// Whether a `--version` number is at least [`MIN_TOOLS_VERSION`]; a number that does not
/// parse is taken as new enough (pre-release builds), the tool itself then decides.
pub fn version_supported(version: &str) -> bool {
    let parse = |v: &str| -> Option<Vec<u64>> {
        v.trim_start_matches('v')
            .split(['.', '-', '+'])
            .take(3)
            .map(|p| p.parse().ok())
            .collect()
    };
    match (parse(version), parse(MIN_TOOLS_VERSION)) {
        (Some(v), Some(min)) => v >= min,
        _ => true,
    }
}

/// The tool's version, refused when it is older than [`MIN_TOOLS_VERSION`].
pub async fn checked_version(path: &Path) -> Result<String, MongoError> {
    let version = tool_version(path).await?;
    if !version_supported(&version) {
        return Err(MongoError::TooOld {
            path: path.display().to_string(),
            version,
        });
    }
    Ok(version)
}

async fn tool_version(path: &Path) -> Result<String, MongoError> {
    let mut cmd = child::command(path);
    cmd.arg("--version").stdout(Stdio::piped());
    let out = child::output(cmd).await.map_err(|e| MongoError::Version {
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
    redactor.add(&conn.tool_uri);
    if let Some(pw) = conn.password() {
        redactor.add(&pw);
    }
}

/// A YAML double-quoted scalar: only `"` and `\` need escaping in a URI.
fn yaml_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The tools' `--config` (`uri: "…"`) handed over through a pipe the child reads as
/// `/dev/fd/N`: the password is never in a file, so nothing a killed run leaves can hold it.
/// The tools read their config once, at start. Drop it once the child is spawned.
pub struct ConfigPipe(OwnedFd);

/// A pipe holds this much without a reader; a longer URI would block the write.
const CONFIG_MAX: usize = 16 << 10;

impl ConfigPipe {
    pub fn new(conn: &MongoConn) -> Result<ConfigPipe, MongoError> {
        let text = format!("uri: {}\n", yaml_quote(conn.tool_uri.expose()));
        if text.len() > CONFIG_MAX {
            return Err(MongoError::ConfigFile(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the connection string is longer than 16 KiB",
            )));
        }
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-int array we own; O_CLOEXEC keeps both ends out of every
        // other child, and only the child this pipe is attached to gets the read end.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(MongoError::ConfigFile(io::Error::last_os_error()));
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut write = std::fs::File::from(write);
        write
            .write_all(text.as_bytes())
            .map_err(MongoError::ConfigFile)?;
        Ok(ConfigPipe(read))
    }

    /// Adds `--config /dev/fd/N` to `cmd`, with the read end kept open across its exec.
    pub fn attach(&self, cmd: &mut tokio::process::Command) {
        let fd = self.0.as_raw_fd();
        cmd.arg("--config").arg(format!("/dev/fd/{fd}"));
        // SAFETY: runs in the forked child before exec and only calls fcntl (async-signal-safe)
        // on an fd the child inherited; the parent's copy is untouched.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// mongodump with the connection and database set (`None`: everything the URI selects); the
/// caller adds the output mode.
fn dump_command(
    tools: &MongoTools,
    config: &ConfigPipe,
    database: Option<&str>,
    extra_args: &[String],
) -> tokio::process::Command {
    let mut cmd = child::command(&tools.mongodump);
    config.attach(&mut cmd);
    if let Some(db) = database {
        cmd.arg("--db").arg(db);
    }
    cmd.args(extra_args);
    cmd
}

/// mongodump options that clash with what backhaul sets, or that cannot work with it, as the
/// one-line reason. `dumps_one_db`: mongodump gets `--db`.
pub fn refused_dump_arg(args: &[String], zip_mode: bool, dumps_one_db: bool) -> Option<String> {
    for a in args {
        let name = a.split('=').next().unwrap_or(a);
        let why = match name {
            "--uri" | "--config" | "--host" | "-h" | "--port" | "--username" | "-u"
            | "--password" | "-p" => "backhaul passes the connection itself (from MONGO_CONNECTION_STRING, through a private --config file)",
            "--db" | "-d" => "name the databases with MONGO_DB_NAME",
            "--out" | "-o" | "--archive" => "backhaul chooses the output (MONGO_FORMAT)",
            "--oplog" if dumps_one_db => "mongodump refuses --oplog with --db: set MONGO_SCOPE=uri with a URI that names no database to dump everything with the oplog",
            "--gzip" if zip_mode => "in zip mode it writes .bson.gz files that a restore without --gzip silently skips; use MONGO_FORMAT=archive (always gzipped)",
            _ => continue,
        };
        return Some(format!("{a} is not allowed: {why}"));
    }
    None
}

/// A running `mongodump --archive --gzip`.
pub struct ArchiveDump {
    pub child: ChildProc,
}

/// Starts `mongodump --archive --gzip` writing the archive to stdout.
pub fn spawn_archive(
    tools: &MongoTools,
    conn: &MongoConn,
    database: Option<&str>,
    extra_args: &[String],
    redactor: Redactor,
) -> Result<ArchiveDump, MongoError> {
    let config = ConfigPipe::new(conn)?;
    let mut cmd = dump_command(tools, &config, database, extra_args);
    cmd.args(["--archive", "--gzip"]).stdout(Stdio::piped());
    let child = ChildProc::spawn("mongodump", cmd, redactor)?;
    Ok(ArchiveDump { child })
}

/// Fails when `dir`'s file system has less than `min_mib` MiB available: a full disk halfway
/// through mongodump is a slow, confusing failure; this one is immediate and names the fix.
pub fn check_free_space(dir: &Path, min_mib: u64) -> Result<(), MongoError> {
    let free = crate::private_fs::free_bytes(dir).map_err(|source| MongoError::WorkDir {
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

/// A temp dir inside `work_dir` that only we can enter (0700): dumps hold the data in clear.
/// Removed when the `PrivateDir` drops.
pub fn private_dir(work_dir: &Path, kind: &str) -> Result<PrivateDir, MongoError> {
    PrivateDir::new_in(work_dir, kind).map_err(|source| MongoError::WorkDir {
        dir: work_dir.display().to_string(),
        source,
    })
}

/// Runs `mongodump --out <private temp dir>` to completion and returns the dir holding
/// `<db>/<collection>.bson|.metadata.json`. The dir is removed when the `PrivateDir` drops
/// (success, failure, or the caller's future being cancelled).
pub async fn dump_to_dir(
    tools: &MongoTools,
    conn: &MongoConn,
    database: Option<&str>,
    extra_args: &[String],
    work_dir: &Path,
    redactor: Redactor,
) -> Result<PrivateDir, MongoError> {
    let dir = private_dir(work_dir, "mongo")?;
    let config = ConfigPipe::new(conn)?;
    let mut cmd = dump_command(tools, &config, database, extra_args);
    cmd.arg("--out").arg(dir.path());
    let child = ChildProc::spawn("mongodump", cmd, redactor)?;
    drop(config);
    child.wait().await?;
    Ok(dir)
}

/// Documents per `db.collection` in a dump tree, from each `.bson` file's length prefixes:
/// exact, and needs no BSON decoder. Other files (metadata, 100.12+'s `prelude.json`) are
/// not collections. Namespaces are the real names ([`tree_namespace`]), as mongorestore
/// reports them and archive mode records them.
pub fn count_documents(root: &Path) -> Result<BTreeMap<String, u64>, MongoError> {
    let mut out = BTreeMap::new();
    let io_err = MongoError::Tree;
    for (rel, path) in walk(root).map_err(io_err)? {
        if !rel.ends_with(".bson") {
            continue;
        }
        let ns = tree_namespace(&path, &rel)?;
        let file = std::fs::File::open(&path).map_err(io_err)?;
        out.insert(ns, count_bson(file, &rel)?);
    }
    Ok(out)
}

/// The `db.collection` a dump tree's `<db>/<file>.bson` holds. mongodump writes the database
/// folder under its own name (no database name holds `/`), but escapes the collection's file
/// name (`url.QueryEscape`: `odd types` → `odd+types`) and, when the escaped name is longer
/// than 238 bytes, truncates it to 208 bytes + `%24` + a hash. The `.metadata.json` beside it
/// records the real name (`collectionName`, 100.x); without one the file name is unescaped as
/// mongorestore does. A file outside any database folder (`oplog.bson`) keeps its stem.
pub fn tree_namespace(bson: &Path, rel: &str) -> Result<String, MongoError> {
    let stem = rel.strip_suffix(".bson").unwrap_or(rel);
    let Some((db, file)) = stem.split_once('/') else {
        return Ok(stem.to_string());
    };
    let metadata = bson.with_file_name(format!("{file}.metadata.json"));
    let recorded = match std::fs::read(&metadata) {
        Ok(raw) => metadata_collection_name(&raw),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(MongoError::Tree(e)),
    };
    let coll = match recorded {
        Some(name) => name,
        None => query_unescape(file).ok_or_else(|| MongoError::BadName(rel.to_string()))?,
    };
    Ok(format!("{db}.{coll}"))
}

/// `collectionName` of a `.metadata.json` (extended JSON; the name is a plain string).
fn metadata_collection_name(raw: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        #[serde(rename = "collectionName")]
        collection_name: Option<String>,
    }
    serde_json::from_slice::<Metadata>(raw)
        .ok()?
        .collection_name
        .filter(|n| !n.is_empty())
}

/// Go's `url.QueryUnescape`, which mongorestore applies to collection file names: `+` is a
/// space, `%XX` a byte, and a `%` not followed by two hex digits is an error (so is a name
/// that does not decode to UTF-8, which a collection name always is).
pub fn query_unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !(i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return None;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// The namespaces mongorestore does not restore as data, so its "N document(s) restored"
/// never counts them: users and roles go through a temporary collection and the
/// `_mergeAuthzCollections` command (checked by [`read_ids`] afterwards), and
/// `admin.system.version` is only read for the dump's auth schema version.
pub const AUTH_USERS: &str = "admin.system.users";
pub const AUTH_ROLES: &str = "admin.system.roles";
pub const AUTH_VERSION: &str = "admin.system.version";

pub fn is_auth_namespace(ns: &str) -> bool {
    [AUTH_USERS, AUTH_ROLES, AUTH_VERSION].contains(&ns)
}

/// The `_id`s (`<db>.<name>`) of the users and roles in a dump tree, per namespace.
pub fn tree_auth_ids(root: &Path) -> Result<BTreeMap<String, BTreeSet<String>>, MongoError> {
    let mut out = BTreeMap::new();
    for ns in [AUTH_USERS, AUTH_ROLES] {
        let rel = format!("{}.bson", ns.replacen('.', "/", 1));
        let raw = match std::fs::read(root.join(&rel)) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(MongoError::Tree(e)),
        };
        let mut ids = BTreeSet::new();
        let mut at = 0;
        while at + 4 <= raw.len() {
            let len = i32::from_le_bytes(raw[at..at + 4].try_into().unwrap_or_default());
            let doc = usize::try_from(len)
                .ok()
                .filter(|&l| l >= 5)
                .and_then(|l| raw.get(at..at + l))
                .ok_or_else(|| MongoError::TruncatedBson(rel.clone()))?;
            ids.extend(bson_str(doc, "_id"));
            at += doc.len();
        }
        out.insert(ns.to_string(), ids);
    }
    Ok(out)
}

/// The string `_id`s of one collection in a deployment, read with mongodump (the only client
/// backhaul has): how a restore checks that the users it restored are there.
pub async fn read_ids(
    tools: &MongoTools,
    conn: &MongoConn,
    ns: &str,
    redactor: Redactor,
) -> Result<BTreeSet<String>, MongoError> {
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    let ArchiveDump { mut child } = spawn_archive(
        tools,
        conn,
        Some(db),
        &[format!("--collection={coll}")],
        redactor,
    )?;
    let stdout = child.take_stdout();
    let read = tokio::task::spawn_blocking(move || -> Result<BTreeSet<String>, MongoError> {
        let Some(stdout) = stdout else {
            return Ok(BTreeSet::new());
        };
        let mut chunks = io::BufReader::new(stdout);
        // Nothing at all (not even a gzip header) when the collection does not exist.
        if io::BufRead::fill_buf(&mut chunks).map_or(true, |b| b.is_empty()) {
            return Ok(BTreeSet::new());
        }
        let mut ids = BTreeSet::new();
        archive_scan(flate2::read::MultiGzDecoder::new(chunks), |_, doc| {
            ids.extend(bson_str(doc, "_id"))
        })?;
        Ok(ids)
    });
    child.wait().await?;
    read.await
        .unwrap_or_else(|_| Err(MongoError::BadArchive("reader panicked".into())))
}

/// mongodump for reading a restore's target back: `MONGODUMP_PATH`, else the one beside
/// mongorestore (the tools ship together), else the first on PATH.
pub fn locate_mongodump_near(explicit: Option<&Path>, mongorestore: &Path) -> Option<PathBuf> {
    explicit
        .filter(|p| is_executable(p))
        .map(Path::to_path_buf)
        .or_else(|| {
            mongorestore
                .parent()
                .map(|d| d.join("mongodump"))
                .filter(|p| is_executable(p))
        })
        .or_else(|| on_path("mongodump"))
}

/// Counts concatenated BSON documents: each starts with its total length as a little-endian
/// int32 (at least 5: the length itself plus the terminating NUL).
fn count_bson(file: std::fs::File, name: &str) -> Result<u64, MongoError> {
    use std::io::Read;
    let truncated = || MongoError::TruncatedBson(name.to_string());
    let len = file.metadata().map_err(|_| truncated())?.len();
    let mut r = io::BufReader::new(file);
    let (mut pos, mut n) = (0u64, 0u64);
    while pos < len {
        let mut prefix = [0u8; 4];
        r.read_exact(&mut prefix).map_err(|_| truncated())?;
        let size = i32::from_le_bytes(prefix);
        if size < 5 || pos + size as u64 > len {
            return Err(truncated());
        }
        r.seek_relative(i64::from(size) - 4)
            .map_err(|_| truncated())?;
        pos += size as u64;
        n += 1;
    }
    Ok(n)
}

/// Documents per `db.collection` in a (decompressed) mongodump archive: the prelude's
/// collection list (so empty collections count as 0), then every namespace block's documents.
/// Format: magic, header document, collection metadata documents, terminator; then blocks of
/// a namespace header (`db`, `collection`, `EOF`) followed by documents and a terminator.
pub fn archive_counts(r: impl io::Read) -> Result<BTreeMap<String, u64>, MongoError> {
    archive_scan(r, |_, _| {})
}

/// [`archive_counts`], handing every document to `on_doc` with its namespace.
pub fn archive_scan(
    mut r: impl io::Read,
    mut on_doc: impl FnMut(&str, &[u8]),
) -> Result<BTreeMap<String, u64>, MongoError> {
    const MAGIC: u32 = 0x8199_e26d;
    let bad = |m: &str| MongoError::BadArchive(m.to_string());
    match read_len(&mut r)? {
        None => return Ok(BTreeMap::new()),
        Some(magic) if magic as u32 == MAGIC => {}
        Some(_) => return Err(bad("wrong magic number")),
    }
    let mut out = BTreeMap::new();
    // The prelude block: its header, then one metadata document per collection.
    read_doc_or_end(&mut r)?.ok_or_else(|| bad("no header"))?;
    while let Some(doc) = read_doc_or_end(&mut r)? {
        if let (Some(db), Some(coll)) = (bson_str(&doc, "db"), bson_str(&doc, "collection")) {
            out.entry(format!("{db}.{coll}")).or_insert(0);
        }
    }
    loop {
        let header = match read_len(&mut r)? {
            None => break, // clean end of the stream
            Some(len) => read_doc_body(&mut r, len)?.ok_or_else(|| bad("empty block"))?,
        };
        let ns = match (bson_str(&header, "db"), bson_str(&header, "collection")) {
            (Some(db), Some(coll)) => format!("{db}.{coll}"),
            _ => return Err(bad("namespace header without db/collection")),
        };
        let mut n = 0u64;
        while let Some(doc) = read_doc_or_end(&mut r)? {
            on_doc(&ns, &doc);
            n += 1;
        }
        *out.entry(ns).or_insert(0) += n;
    }
    Ok(out)
}

/// Counts a gzipped archive's documents on a thread of its own while the archive streams past
/// on its way to storage ([`ArchiveCounter::tee`]), so archive mode counts exactly what it
/// stored, and a stream that is not a complete archive fails the backup.
pub struct ArchiveCounter {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    counting: std::thread::JoinHandle<Result<BTreeMap<String, u64>, MongoError>>,
}

impl ArchiveCounter {
    pub fn start() -> ArchiveCounter {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(32);
        let counting = std::thread::spawn(move || {
            let chunks = ChunkReader {
                rx,
                chunk: Vec::new(),
                at: 0,
            };
            let mut chunks = io::BufReader::new(chunks);
            // mongodump writes nothing at all (not even a gzip header) when a --collection
            // filter matches nothing.
            if io::BufRead::fill_buf(&mut chunks).map_or(true, |b| b.is_empty()) {
                return Ok(BTreeMap::new());
            }
            archive_counts(flate2::read::MultiGzDecoder::new(chunks))
        });
        ArchiveCounter { tx, counting }
    }

    /// `r`, with every byte read also handed to the counter.
    pub fn tee<R: io::Read>(&self, r: R) -> Tee<R> {
        Tee {
            inner: r,
            tx: Some(self.tx.clone()),
        }
    }

    /// The counts, once every tee is dropped (the stream ended).
    pub fn finish(self) -> Result<BTreeMap<String, u64>, MongoError> {
        drop(self.tx);
        self.counting
            .join()
            .unwrap_or_else(|_| Err(MongoError::BadArchive("counter panicked".into())))
    }
}

pub struct Tee<R> {
    inner: R,
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
}

impl<R: io::Read> io::Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        // A counter that gave up (not an archive) must not stop the upload: its error is
        // reported by finish().
        if n > 0
            && self
                .tx
                .as_ref()
                .is_some_and(|tx| tx.send(buf[..n].to_vec()).is_err())
        {
            self.tx = None;
        }
        Ok(n)
    }
}

struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => (self.chunk, self.at) = (c, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The next int32 length, or `None` at a clean end of stream.
fn read_len(r: &mut impl io::Read) -> Result<Option<i32>, MongoError> {
    let mut word = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut word[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(MongoError::BadArchive("truncated".into())),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(MongoError::BadArchive(e.to_string())),
        }
    }
    Ok(Some(i32::from_le_bytes(word)))
}

/// A document (with its length prefix), or `None` for the terminator (-1).
fn read_doc_body(r: &mut impl io::Read, len: i32) -> Result<Option<Vec<u8>>, MongoError> {
    if len == -1 {
        return Ok(None);
    }
    if !(5..=64 << 20).contains(&len) {
        return Err(MongoError::BadArchive(format!("bad document length {len}")));
    }
    let mut doc = vec![0u8; len as usize];
    doc[..4].copy_from_slice(&len.to_le_bytes());
    r.read_exact(&mut doc[4..])
        .map_err(|_| MongoError::BadArchive("truncated".into()))?;
    Ok(Some(doc))
}

fn read_doc_or_end(r: &mut impl io::Read) -> Result<Option<Vec<u8>>, MongoError> {
    match read_len(r)? {
        None => Err(MongoError::BadArchive("truncated".into())),
        Some(len) => read_doc_body(r, len),
    }
}

/// A top-level string field of a BSON document; enough to read archive headers.
fn bson_str(doc: &[u8], key: &str) -> Option<String> {
    let mut i = 4;
    let le32 = |b: &[u8]| i32::from_le_bytes(b.try_into().ok()?).try_into().ok();
    while i < doc.len().saturating_sub(1) {
        let kind = doc[i];
        let name_end = i + 1 + doc.get(i + 1..)?.iter().position(|&b| b == 0)?;
        let name = std::str::from_utf8(&doc[i + 1..name_end]).ok()?;
        let v = name_end + 1;
        let size: usize = match kind {
            0x01 | 0x09 | 0x11 | 0x12 => 8,
            0x02 | 0x0D | 0x0E => 4 + le32(doc.get(v..v + 4)?)?,
            0x03 | 0x04 | 0x0F => le32(doc.get(v..v + 4)?)?,
            0x05 => 5 + le32(doc.get(v..v + 4)?)?,
            0x06 | 0x0A | 0x7F | 0xFF => 0,
            0x07 => 12,
            0x08 => 1,
            0x0C => 4 + le32(doc.get(v..v + 4)?)? + 12,
            0x10 => 4,
            0x13 => 16,
            0x0B => {
                let a = doc.get(v..)?.iter().position(|&b| b == 0)? + 1;
                a + doc.get(v + a..)?.iter().position(|&b| b == 0)? + 1
            }
            _ => return None,
        };
        if kind == 0x02 && name == key {
            let len: usize = le32(doc.get(v..v + 4)?)?;
            let bytes = doc.get(v + 4..v + 4 + len.checked_sub(1)?)?;
            return String::from_utf8(bytes.to_vec()).ok();
        }
        i = v + size;
    }
    None
}

/// A document's `_id` when it is a string (users' and roles' `<db>.<name>`).
pub fn doc_id(doc: &[u8]) -> Option<String> {
    bson_str(doc, "_id")
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
        raw += crate::write_path::copy_counting(&mut file, &mut zip)?;
    }
    zip.finish().map_err(io::Error::other)?;
    Ok(raw)
}

/// What mongorestore reads: a dump tree (`<dir>/<db>/<coll>.bson`) or a gzipped archive file.
pub enum RestoreSource<'a> {
    Dir(&'a Path),
    ArchiveGz(&'a Path),
}

/// How mongorestore applies a dump holding `databases`.
pub struct MongoRestoreOpts<'a> {
    /// The databases in the dump; only these are restored.
    pub databases: &'a [String],
    /// Restore the dump's one database under this name instead.
    pub rename_to: Option<&'a str>,
    /// `--drop`: replace each collection the dump holds (backhaul's `--clean`).
    pub drop: bool,
}

/// An `--nsInclude` pattern matching `s` literally: `*` is its wildcard, `\` its escape.
fn include_escape(s: &str) -> String {
    escape(s, &['*', '\\'])
}

/// An `--nsFrom`/`--nsTo` pattern matching `s` literally: there `$` delimits variables and
/// `\` escapes, while `*` is an ordinary character (escaping it makes the pattern match
/// nothing, and mongorestore then restores under the original name).
fn rename_escape(s: &str) -> String {
    escape(s, &['$', '\\'])
}

fn escape(s: &str, special: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if special.contains(&c) {
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
    for db in opts.databases {
        args.push(format!("--nsInclude={}.*", include_escape(db)).into());
    }
    if let (Some(to), [from]) = (opts.rename_to, opts.databases) {
        if from != to {
            args.push(format!("--nsFrom={}.$coll$", rename_escape(from)).into());
            args.push(format!("--nsTo={}.$coll$", rename_escape(to)).into());
        }
    }
    if opts.drop {
        args.push("--drop".into());
    }
    args.push("--stopOnError".into());
    args
}

/// What mongorestore reported.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// `N document(s) restored successfully`, when printed.
    pub total: Option<u64>,
    /// `M document(s) failed to restore`, when printed.
    pub failed: Option<u64>,
    /// Documents per restored namespace, from `finished restoring <ns> (N documents, …)`.
    pub collections: BTreeMap<String, u64>,
}

fn is_restore_report(line: &str) -> bool {
    line.contains("finished restoring ") || line.contains(" document(s) restored successfully")
}

/// Reads mongorestore's summary lines.
pub fn parse_restore_report(lines: &[String]) -> RestoreReport {
    let mut r = RestoreReport::default();
    let number_before = |s: &str| -> Option<u64> {
        s.trim_end()
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    for l in lines {
        if let Some((head, tail)) = l.split_once(" document(s) restored successfully") {
            r.total = number_before(head);
            r.failed = tail
                .split_once(" document(s) failed")
                .and_then(|(h, _)| number_before(h));
        } else if let Some(at) = l.find("finished restoring ") {
            let rest = &l[at + "finished restoring ".len()..];
            if let Some((ns, n)) = rest.rsplit_once(" (") {
                if let Some(n) = n.split(' ').next().and_then(|n| n.parse().ok()) {
                    r.collections.insert(ns.to_string(), n);
                }
            }
        }
    }
    r
}

/// Runs mongorestore to completion and returns what it reported.
pub async fn run_restore(
    mongorestore: &Path,
    conn: &MongoConn,
    source: &RestoreSource<'_>,
    opts: &MongoRestoreOpts<'_>,
    redactor: Redactor,
) -> Result<RestoreReport, MongoError> {
    let config = ConfigPipe::new(conn)?;
    let mut cmd = child::command(mongorestore);
    config.attach(&mut cmd);
    cmd.args(restore_args(source, opts));
    let child = ChildProc::spawn_keeping("mongorestore", cmd, redactor, is_restore_report)?;
    drop(config);
    let (_, kept) = child.wait_keeping().await?;
    Ok(parse_restore_report(&kept))
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
    fn version_floor_is_100_3_0() {
        for (v, ok) in [
            ("100.2.1", false),
            ("100.3.0", true),
            ("100.8.0", true),
            ("100.16.1", true),
            ("99.9.9", false),
            ("r4.2.0", true),
        ] {
            assert_eq!(version_supported(v), ok, "{v}");
        }
    }

    #[test]
    fn refused_dump_args() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(refused_dump_arg(&args(&["--oplog"]), false, true).is_some());
        assert!(refused_dump_arg(&args(&["--oplog"]), false, false).is_none());
        assert!(refused_dump_arg(&args(&["--gzip"]), true, true).is_some());
        assert!(refused_dump_arg(&args(&["--gzip"]), false, true).is_none());
        assert!(refused_dump_arg(&args(&["--uri=mongodb://x"]), false, true).is_some());
        assert!(refused_dump_arg(&args(&["--readPreference=secondary"]), true, true).is_none());
    }

    #[test]
    fn tool_log_lines_are_read() {
        let r = parse_restore_report(&[
            "t\tfinished restoring copy.a.b (3 documents, 0 failures)".to_string(),
            "t\t1063 document(s) restored successfully. 2 document(s) failed to restore."
                .to_string(),
        ]);
        assert_eq!((r.total, r.failed), (Some(1063), Some(2)));
        assert_eq!(r.collections["copy.a.b"], 3);
    }

    /// A BSON document of string fields.
    fn doc(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in fields {
            body.push(0x02);
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(&(v.len() as i32 + 1).to_le_bytes());
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        let mut out = ((body.len() + 5) as i32).to_le_bytes().to_vec();
        out.extend(body);
        out.push(0);
        out
    }

    #[test]
    fn archive_documents_are_counted_per_namespace() {
        let end = (-1i32).to_le_bytes();
        let mut a = 0x8199_e26du32.to_le_bytes().to_vec();
        a.extend(doc(&[("version", "0.1")]));
        for c in ["a.b", "empty"] {
            a.extend(doc(&[("db", "sh*p"), ("collection", c)]));
        }
        a.extend(end);
        for _ in 0..2 {
            // Interleaved blocks of one namespace add up.
            a.extend(doc(&[("db", "sh*p"), ("collection", "a.b")]));
            a.extend(doc(&[("x", "1")]));
            a.extend(doc(&[("x", "2")]));
            a.extend(end);
        }
        a.extend(doc(&[("db", "sh*p"), ("collection", "a.b")]));
        a.extend(end);
        let counts = archive_counts(&a[..]).unwrap();
        assert_eq!(counts["sh*p.a.b"], 4);
        assert_eq!(counts["sh*p.empty"], 0);
        assert!(archive_counts(&a[..a.len() - 6]).is_err(), "truncated");
        assert!(archive_counts(&b"not an archive"[..]).is_err());
        assert!(archive_counts(&b""[..]).unwrap().is_empty());

        // The same, counted while streaming through a tee.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&a).unwrap();
        let gz = enc.finish().unwrap();
        let counter = ArchiveCounter::start();
        let mut out = Vec::new();
        io::copy(&mut counter.tee(&gz[..]), &mut out).unwrap();
        assert_eq!(out, gz);
        assert_eq!(counter.finish().unwrap(), counts);
    }

    #[test]
    fn file_names_unescape_as_mongorestore_does() {
        for (file, name) in [
            ("odd+types", "odd types"),
            ("a%2Bb", "a+b"),
            ("100%25", "100%"),
            ("a.b", "a.b"),
            ("%C3%A9v%C3%A9nements", "événements"),
            ("$admin.system.users", "$admin.system.users"),
        ] {
            assert_eq!(query_unescape(file).as_deref(), Some(name), "{file}");
        }
        for bad in ["100%", "a%2", "%zz", "%C3"] {
            assert_eq!(query_unescape(bad), None, "{bad}");
        }
    }

    #[test]
    fn tree_names_come_from_metadata_then_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sh op");
        std::fs::create_dir_all(&db).unwrap();
        // Truncated: only the metadata knows the name.
        let long = "é".repeat(120);
        let truncated = format!("{}%24hash", &"%C3%A9".repeat(35)[..208]);
        std::fs::write(db.join(format!("{truncated}.bson")), doc(&[("a", "b")])).unwrap();
        std::fs::write(
            db.join(format!("{truncated}.metadata.json")),
            format!(r#"{{"indexes":[],"collectionName":"{long}","type":"collection"}}"#),
        )
        .unwrap();
        // Older metadata without collectionName: the file name, unescaped.
        std::fs::write(db.join("odd+types.bson"), b"").unwrap();
        std::fs::write(db.join("odd+types.metadata.json"), br#"{"indexes":[]}"#).unwrap();
        std::fs::write(db.join("100%25.bson"), b"").unwrap();
        std::fs::write(dir.path().join("prelude.json"), b"{}").unwrap();
        let counts = count_documents(dir.path()).unwrap();
        let want: BTreeMap<String, u64> = [
            (format!("sh op.{long}"), 1),
            ("sh op.odd types".to_string(), 0),
            ("sh op.100%".to_string(), 0),
        ]
        .into_iter()
        .collect();
        assert_eq!(counts, want);

        std::fs::write(db.join("bad%zz.bson"), b"").unwrap();
        assert!(matches!(
            count_documents(dir.path()),
            Err(MongoError::BadName(_))
        ));
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
                databases: &["sh*p".to_string()],
                rename_to: Some("c$py"),
                drop: true,
            },
        );
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            args,
            vec![
                "--dir",
                "/t/dump",
                "--nsInclude=sh\\*p.*",
                "--nsFrom=sh*p.$coll$",
                "--nsTo=c\\$py.$coll$",
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
