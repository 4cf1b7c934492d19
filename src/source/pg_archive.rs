//! pg_dump's custom archive format, read as it streams past: the header and table of contents
//! first, then where each data block starts and ends.
//!
//! `restore --jobs` uses this to hand every table's data to its own pg_restore while the object
//! is still downloading (see [`crate::commands::restore::jobs`]). pg_restore cannot do that
//! itself: parallel restore needs a seekable file, and an archive pg_dump wrote into a pipe
//! (every backhaul backup) has no data offsets in its TOC, so it would have to wait for the
//! whole object. The format is pg_dump's own (`pg_backup_archiver.c`, `pg_backup_custom.c`):
//!
//! ```text
//! "PGDMP" vmaj vmin vrev intSize offSize format compression header-fields...
//! tocCount { dumpId hadDumper tableoid oid tag desc section defn dropStmt copyStmt
//!            namespace tablespace [tableam] [relkind] owner withOids deps... NULL offset }
//! { BLK_DATA id {len bytes}* 0 | BLK_BLOBS id {oid {len bytes}* 0}* 0 }*
//! ```
//!
//! An int is a sign byte and `intSize` little-endian bytes; a string is an int length (-1 for
//! NULL) and its bytes; an offset is a flag byte and `offSize` bytes. Archive versions 1.12
//! (PostgreSQL 9.0) to 1.16 (PostgreSQL 17) are read; anything else is reported as such and
//! the caller falls back to a plain download.

use std::collections::{HashMap, HashSet};

mod reframe;
pub use reframe::Reframer;

/// Data block types (`pg_backup_archiver.h`).
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;

/// Offset flags (`K_OFFSET_*`).
const OFFSET_POS_NOT_SET: u8 = 1;
const OFFSET_POS_SET: u8 = 2;
const OFFSET_NO_DATA: u8 = 3;

/// A TOC bigger than this is not parsed (the caller falls back): it bounds what is buffered
/// before the first data block, like the preflight's own head limit.
pub const MAX_HEAD: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Comments, ACLs and the like: they belong to the section of the entry before them.
    None,
    PreData,
    Data,
    PostData,
}

/// Where an entry's data is, as the TOC says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataState {
    /// A data block exists; pg_dump wrote into a pipe and could not go back to record where.
    NotSet,
    /// A data block exists at this offset (pg_dump wrote to a seekable file).
    Set(u64),
    /// No data block (schema objects, sequence values, matview refreshes).
    NoData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    pub dump_id: i32,
    pub had_dumper: bool,
    pub tag: String,
    pub desc: String,
    pub namespace: Option<String>,
    pub owner: Option<String>,
    pub section: Section,
    pub data: DataState,
    /// The entries this one depends on (their dump IDs), as pg_dump recorded them: what
    /// `pg_restore -j` schedules by.
    pub deps: Vec<i32>,
}

impl TocEntry {
    pub fn has_block(&self) -> bool {
        self.data != DataState::NoData
    }

    /// `schema.tag (TYPE)`, for messages.
    pub fn label(&self) -> String {
        match self.namespace.as_deref().filter(|n| !n.is_empty()) {
            Some(ns) => format!("{} {ns}.{}", self.desc, self.tag),
            None => format!("{} {}", self.desc, self.tag),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toc {
    /// Archive version: major, minor, revision.
    pub version: (u8, u8, u8),
    pub entries: Vec<TocEntry>,
    /// Offset of the first data block: the header and TOC are the bytes before it.
    pub data_start: u64,
    /// pg_dump compressed the data blocks itself (`-Z` above 0; backhaul's own dumps are not).
    pub compressed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a pg_dump custom-format archive")]
    NotCustom,
    #[error("archive format {0}.{1} is not one backhaul reads (1.12 to 1.16)")]
    Version(u8, u8),
    #[error("table of contents larger than {} MiB", MAX_HEAD >> 20)]
    TooLarge,
    #[error("damaged archive at byte {at}: {what}")]
    Damaged { at: u64, what: String },
    #[error("archive ends inside {0}")]
    Truncated(&'static str),
    #[error("not a pg_dump directory-format toc.dat")]
    NotDirectory,
    #[error("directory dump compressed by pg_dump: backhaul reads only dumps taken with -Z0")]
    CompressedDirectory,
    #[error("data file name {0:?} of a directory dump is not one pg_dump writes")]
    FileName(String),
}

/// What the scanner found, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The header and TOC are complete (the bytes up to `data_start` have been pushed).
    Toc(Toc),
    /// A data block's first byte (its type byte) is at `at`.
    BlockStart { dump_id: i32, at: u64 },
    /// A data block's last byte is at `end - 1`.
    BlockEnd { dump_id: i32, end: u64 },
}

/// The parser's finer output, for rewriting the data area ([`Reframer`]); [`Event`]s are
/// derived from it.
enum Token<'a> {
    /// The header and TOC parsed: their bytes, and the bytes after them received so far
    /// (which the same push goes on to parse).
    Head {
        toc: Toc,
        int_size: usize,
        raw: &'a [u8],
        rest: &'a [u8],
    },
    BlockStart {
        kind: u8,
        dump_id: i32,
        at: u64,
    },
    /// A large object of a BLOBS block begins.
    LoStart(i64),
    /// Bytes of a chunk's contents, in order; a chunk may come in several pieces.
    Payload(&'a [u8]),
    /// A large object's end (its zero-length chunk).
    LoEnd,
    BlockEnd {
        dump_id: i32,
        end: u64,
    },
}

impl Token<'_> {
    fn into_event(self) -> Option<Event> {
        match self {
            Token::Head { toc, .. } => Some(Event::Toc(toc)),
            Token::BlockStart { dump_id, at, .. } => Some(Event::BlockStart { dump_id, at }),
            Token::BlockEnd { dump_id, end } => Some(Event::BlockEnd { dump_id, end }),
            Token::LoStart(_) | Token::Payload(_) | Token::LoEnd => None,
        }
    }
}

/// A push parser: bytes in, [`Event`]s out, nothing kept but the head until the TOC parses.
pub struct Scanner {
    pos: u64,
    head: Vec<u8>,
    next_try: usize,
    blocks: Option<Blocks>,
    failed: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            pos: 0,
            head: Vec::new(),
            next_try: 1,
            blocks: None,
            failed: false,
        }
    }
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner::default()
    }

    /// Takes the next bytes of the archive. After an error the scanner stays failed.
    pub fn push(&mut self, bytes: &[u8], out: &mut impl FnMut(Event)) -> Result<(), ArchiveError> {
        self.push_tokens(bytes, &mut |t| {
            t.into_event().into_iter().for_each(&mut *out)
        })
    }

    fn push_tokens(
        &mut self,
        bytes: &[u8],
        out: &mut impl FnMut(Token<'_>),
    ) -> Result<(), ArchiveError> {
        if self.failed {
            return Ok(());
        }
        let r = self.push_inner(bytes, out);
        self.failed = r.is_err();
        r
    }

    fn push_inner(
        &mut self,
        bytes: &[u8],
        out: &mut impl FnMut(Token<'_>),
    ) -> Result<(), ArchiveError> {
        if let Some(b) = &mut self.blocks {
            return b.push(bytes, &mut self.pos, out);
        }
        self.head.extend_from_slice(bytes);
        // Parsing from the start each time: retry only once the head has doubled, so a large
        // TOC arriving in small pieces costs linear time, not quadratic.
        if self.head.len() < self.next_try {
            return Ok(());
        }
        self.try_head(out)
    }

    fn try_head(&mut self, out: &mut impl FnMut(Token<'_>)) -> Result<(), ArchiveError> {
        match parse_head(&self.head) {
            Ok(Some((toc, int_size))) => {
                let start = toc.data_start as usize;
                let rest = self.head.split_off(start);
                let raw = std::mem::take(&mut self.head);
                self.pos = start as u64;
                out(Token::Head {
                    toc,
                    int_size,
                    raw: &raw,
                    rest: &rest,
                });
                let mut blocks = Blocks::new(int_size);
                let r = blocks.push(&rest, &mut self.pos, out);
                self.blocks = Some(blocks);
                r
            }
            Ok(None) if self.head.len() > MAX_HEAD => Err(ArchiveError::TooLarge),
            Ok(None) => {
                self.next_try = (self.head.len() * 2).max(64 << 10);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The archive ended: it must end between data blocks.
    pub fn finish(&mut self, out: &mut impl FnMut(Event)) -> Result<(), ArchiveError> {
        self.finish_tokens(&mut |t| t.into_event().into_iter().for_each(&mut *out))
    }

    fn finish_tokens(&mut self, out: &mut impl FnMut(Token<'_>)) -> Result<(), ArchiveError> {
        if self.failed {
            return Ok(());
        }
        if self.blocks.is_none() {
            self.next_try = 0;
            self.try_head(out)?;
            if self.blocks.is_none() {
                return Err(ArchiveError::Truncated("the table of contents"));
            }
        }
        match &self.blocks {
            Some(b) if b.at_boundary() => Ok(()),
            _ => Err(ArchiveError::Truncated("a data block")),
        }
    }
}

/// Reads the header and TOC from the start of `buf`: `None` if `buf` ends before the TOC does.
fn parse_head(buf: &[u8]) -> Result<Option<(Toc, usize)>, ArchiveError> {
    let mut r = Reader {
        buf,
        at: 0,
        int_size: 4,
    };
    match read_head(&mut r, None) {
        Ok(toc) => Ok(Some((toc, r.int_size))),
        Err(Short::More) => Ok(None),
        Err(Short::Bad(e)) => Err(e),
    }
}

enum Short {
    More,
    Bad(ArchiveError),
}

impl From<ArchiveError> for Short {
    fn from(e: ArchiveError) -> Self {
        Short::Bad(e)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    int_size: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8], Short> {
        let end = self.at.checked_add(n).ok_or(Short::More)?;
        let s = self.buf.get(self.at..end).ok_or(Short::More)?;
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, Short> {
        Ok(self.bytes(1)?[0])
    }

    fn damaged(&self, what: impl Into<String>) -> Short {
        Short::Bad(ArchiveError::Damaged {
            at: self.at as u64,
            what: what.into(),
        })
    }

    fn int(&mut self) -> Result<i64, Short> {
        let n = self.int_size;
        let b = self.bytes(1 + n)?;
        Ok(decode_int(b))
    }

    fn string(&mut self) -> Result<Option<String>, Short> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        if len as usize > MAX_HEAD {
            return Err(self.damaged(format!("string of {len} bytes")));
        }
        let s = self.bytes(len as usize)?;
        Ok(Some(String::from_utf8_lossy(s).into_owned()))
    }
}

/// Sign byte, then little-endian magnitude.
fn decode_int(b: &[u8]) -> i64 {
    let mut v: i64 = 0;
    for (i, x) in b[1..].iter().enumerate() {
        v |= i64::from(*x) << (8 * i);
    }
    if b[0] != 0 {
        -v
    } else {
        v
    }
}

/// Where a directory TOC differs from a custom one, noted while it is read.
#[derive(Default)]
struct DirLayout {
    /// Position of the format byte.
    format_at: usize,
    off_size: usize,
    /// Each entry's tail (its file name): start and end, and the name ("" for no data).
    tails: Vec<(usize, usize, String)>,
}

fn read_head(r: &mut Reader, mut dir: Option<&mut DirLayout>) -> Result<Toc, Short> {
    if r.bytes(5)? != b"PGDMP" {
        return Err(ArchiveError::NotCustom.into());
    }
    let version = (r.byte()?, r.byte()?, r.byte()?);
    if version.0 != 1 || !(12..=16).contains(&version.1) {
        return Err(ArchiveError::Version(version.0, version.1).into());
    }
    let int_size = r.byte()? as usize;
    let off_size = r.byte()? as usize;
    if !(1..=8).contains(&int_size) || !(1..=8).contains(&off_size) {
        return Err(r.damaged(format!("integer size {int_size}, offset size {off_size}")));
    }
    r.int_size = int_size;
    // The format byte: 1 (archCustom) for a custom archive; a directory's toc.dat says 3
    // (archTar: pg_backup_directory.c's _CloseArchive writes it so, the layout being tar's).
    let format_at = r.at;
    let want = if dir.is_some() { 3 } else { 1 };
    if r.byte()? != want {
        return Err(match dir {
            Some(_) => ArchiveError::NotDirectory,
            None => ArchiveError::NotCustom,
        }
        .into());
    }
    let compressed = if version.1 >= 15 {
        i64::from(r.byte()?) // compression algorithm
    } else {
        r.int()? // compression level
    };
    if let Some(d) = dir.as_deref_mut() {
        // Its data files would be gzip (or lz4, zstd) files of their own, not raw COPY data.
        if compressed != 0 {
            return Err(ArchiveError::CompressedDirectory.into());
        }
        d.format_at = format_at;
        d.off_size = off_size;
    }
    for _ in 0..7 {
        r.int()?; // creation date, struct tm
    }
    for _ in 0..3 {
        r.string()?; // database name, server version, pg_dump version
    }
    let count = r.int()?;
    if count < 0 {
        return Err(r.damaged(format!("{count} TOC entries")));
    }
    let mut entries = Vec::with_capacity((count as usize).min(1 << 16));
    for _ in 0..count {
        entries.push(read_entry(r, version.1, off_size, dir.as_deref_mut())?);
    }
    Ok(Toc {
        version,
        entries,
        data_start: r.at as u64,
        compressed: compressed != 0,
    })
}

fn read_entry(
    r: &mut Reader,
    minor: u8,
    off_size: usize,
    dir: Option<&mut DirLayout>,
) -> Result<TocEntry, Short> {
    let dump_id = r.int()?;
    if dump_id <= 0 || dump_id > i64::from(i32::MAX) {
        return Err(r.damaged(format!("entry ID {dump_id}")));
    }
    let had_dumper = r.int()? != 0;
    r.string()?; // table oid
    r.string()?; // oid
    let tag = r.string()?.unwrap_or_default();
    let desc = r.string()?.unwrap_or_default();
    let section = match r.int()? {
        1 => Section::None,
        2 => Section::PreData,
        3 => Section::Data,
        4 => Section::PostData,
        s => return Err(r.damaged(format!("section {s} of entry {dump_id}"))),
    };
    r.string()?; // defn
    r.string()?; // dropStmt
    r.string()?; // copyStmt
    let namespace = r.string()?;
    r.string()?; // tablespace
    if minor >= 14 {
        r.string()?; // tableam
    }
    if minor >= 16 {
        r.int()?; // relkind
    }
    let owner = r.string()?;
    r.string()?; // withOids
    let mut deps = Vec::new();
    while let Some(d) = r.string()? {
        // A dependency that is not a number names nothing pg_restore could wait for either.
        if let Ok(id) = d.trim().parse::<i32>() {
            deps.push(id);
        }
    }
    let data = if let Some(d) = dir {
        // `_WriteExtraToc` of pg_backup_directory.c: the data file's name, or "".
        let start = r.at;
        let name = r.string()?.unwrap_or_default();
        let data = if name.is_empty() {
            DataState::NoData
        } else {
            DataState::NotSet
        };
        d.tails.push((start, r.at, name));
        data
    } else {
        let flag = r.byte()?;
        let raw = r.bytes(off_size)?;
        let offset = raw
            .iter()
            .enumerate()
            .fold(0u64, |v, (i, b)| v | u64::from(*b) << (8 * i));
        match flag {
            OFFSET_POS_NOT_SET => DataState::NotSet,
            OFFSET_POS_SET => DataState::Set(offset),
            OFFSET_NO_DATA => DataState::NoData,
            f => return Err(r.damaged(format!("data offset flag {f} of entry {dump_id}"))),
        }
    };
    Ok(TocEntry {
        dump_id: dump_id as i32,
        had_dumper,
        tag,
        desc,
        namespace,
        owner,
        section,
        data,
        deps,
    })
}

/// What the next int in the data area is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntFor {
    BlockId,
    ChunkLen,
    LoOid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Between blocks: a block type byte, or the end of the archive.
    Type,
    Int(IntFor),
    /// Inside a chunk's bytes.
    Skip(u64),
}

/// The data area's state machine. Ints may be split across pushes, so their bytes are
/// collected first.
struct Blocks {
    int_size: usize,
    step: Step,
    int_buf: [u8; 9],
    int_len: usize,
    /// The block being read: type, id, first byte.
    block: (u8, i32, u64),
    /// Inside a large object of a BLOBS block (its chunks end with 0, then the next OID).
    in_lo: bool,
}

impl Blocks {
    fn new(int_size: usize) -> Blocks {
        Blocks {
            int_size,
            step: Step::Type,
            int_buf: [0; 9],
            int_len: 0,
            block: (0, 0, 0),
            in_lo: false,
        }
    }

    fn at_boundary(&self) -> bool {
        self.step == Step::Type
    }

    fn push(
        &mut self,
        mut bytes: &[u8],
        pos: &mut u64,
        out: &mut impl FnMut(Token<'_>),
    ) -> Result<(), ArchiveError> {
        while !bytes.is_empty() {
            match self.step {
                Step::Skip(n) => {
                    let k = n.min(bytes.len() as u64);
                    out(Token::Payload(&bytes[..k as usize]));
                    bytes = &bytes[k as usize..];
                    *pos += k;
                    self.step = if k == n {
                        Step::Int(IntFor::ChunkLen)
                    } else {
                        Step::Skip(n - k)
                    };
                }
                Step::Type => {
                    let t = bytes[0];
                    if t != BLK_DATA && t != BLK_BLOBS {
                        return Err(ArchiveError::Damaged {
                            at: *pos,
                            what: format!("data block type {t}"),
                        });
                    }
                    self.block = (t, 0, *pos);
                    bytes = &bytes[1..];
                    *pos += 1;
                    self.step = Step::Int(IntFor::BlockId);
                }
                Step::Int(what) => {
                    let want = 1 + self.int_size;
                    let k = (want - self.int_len).min(bytes.len());
                    self.int_buf[self.int_len..self.int_len + k].copy_from_slice(&bytes[..k]);
                    self.int_len += k;
                    bytes = &bytes[k..];
                    *pos += k as u64;
                    if self.int_len == want {
                        self.int_len = 0;
                        let v = decode_int(&self.int_buf[..want]);
                        self.on_int(what, v, *pos, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn on_int(
        &mut self,
        what: IntFor,
        v: i64,
        pos: u64,
        out: &mut impl FnMut(Token<'_>),
    ) -> Result<(), ArchiveError> {
        let bad = |w: String| ArchiveError::Damaged { at: pos, what: w };
        match what {
            IntFor::BlockId => {
                if v <= 0 || v > i64::from(i32::MAX) {
                    return Err(bad(format!("data block ID {v}")));
                }
                self.block.1 = v as i32;
                out(Token::BlockStart {
                    kind: self.block.0,
                    dump_id: self.block.1,
                    at: self.block.2,
                });
                self.in_lo = false;
                self.step = Step::Int(if self.block.0 == BLK_BLOBS {
                    IntFor::LoOid
                } else {
                    IntFor::ChunkLen
                });
            }
            IntFor::ChunkLen if v < 0 => return Err(bad(format!("chunk length {v}"))),
            IntFor::ChunkLen if v > 0 => self.step = Step::Skip(v as u64),
            IntFor::ChunkLen if self.in_lo => {
                self.in_lo = false;
                out(Token::LoEnd);
                self.step = Step::Int(IntFor::LoOid);
            }
            IntFor::ChunkLen | IntFor::LoOid if v == 0 => {
                out(Token::BlockEnd {
                    dump_id: self.block.1,
                    end: pos,
                });
                self.step = Step::Type;
            }
            IntFor::ChunkLen => unreachable!("chunk lengths are matched above"),
            IntFor::LoOid => {
                out(Token::LoStart(v));
                self.in_lo = true;
                self.step = Step::Int(IntFor::ChunkLen);
            }
        }
        Ok(())
    }
}

/// Which pg_restore run restores each entry, in the order a single pg_restore would: pass
/// MAIN's pre-data, then the data blocks, then everything else (post-data, the ACL pass, the
/// post-ACL pass). Mirrors `pg_backup_archiver.c`: a SECTION_NONE entry takes the section of
/// the entry before it, and `_tocEntryRestorePass` picks the pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Pre-data, main pass: what `pg_restore -j` itself runs first, in one connection.
    pub pre: Vec<i32>,
    /// Entries with a data block, in archive order.
    pub blocks: Vec<i32>,
    /// The rest of the main pass: post-data, sequence values.
    pub post: Vec<i32>,
    /// The ACL and post-ACL passes (grants, default privileges, matview refreshes, event
    /// triggers), for one pg_restore of their own without `--jobs`: `pg_restore -j` hands ACL
    /// entries to its workers side by side, and an ACL entry depends only on its object, not on
    /// the schema's grant. A grant made by a non-owner (`SET SESSION AUTHORIZATION grantor`)
    /// then fails with "permission denied for schema" whenever it runs before the schema grant
    /// that lets the grantor in. In archive order, one at a time, as a single pg_restore does.
    pub privileges: Vec<i32>,
    /// What each entry of `post` waits for (see [`Plan::ready`]).
    pub needs: HashMap<i32, Needs>,
}

/// What a post-data entry waits for before it may run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Data blocks that must have committed: those of every table it depends on. pg_dump
    /// makes an index or constraint depend on its table's definition, not its data, and
    /// `pg_restore -j` moves such a dependency to the table's data
    /// (`repoint_table_dependencies`); so does this.
    pub blocks: Vec<i32>,
    /// Other post-data entries that must be done first (or run in the same pg_restore, which
    /// orders them itself).
    pub post: Vec<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Main,
    Acl,
    PostAcl,
}

fn restore_pass(e: &TocEntry) -> Pass {
    match e.desc.as_str() {
        "ACL" | "ACL LANGUAGE" | "DEFAULT ACL" => Pass::Acl,
        "EVENT TRIGGER" | "MATERIALIZED VIEW DATA" => Pass::PostAcl,
        "COMMENT" if e.tag.starts_with("EVENT TRIGGER ") => Pass::PostAcl,
        _ => Pass::Main,
    }
}

impl Plan {
    /// The post-data entries that may run now, in archive order, given the data blocks
    /// `committed` and the post-data entries `done` and `busy` (running): each has all its
    /// blocks committed and none of them in `busy_tables` (tables a running pg_restore
    /// touches), and every post-data entry it depends on done or in this same set (one
    /// `pg_restore` orders its own entries). None depends on a busy one.
    pub fn ready(
        &self,
        committed: &HashSet<i32>,
        done: &HashSet<i32>,
        busy: &HashSet<i32>,
        busy_tables: &HashSet<i32>,
    ) -> Vec<i32> {
        let none = Needs::default();
        let needs = |id: &i32| self.needs.get(id).unwrap_or(&none);
        let mut set: HashSet<i32> = self
            .post
            .iter()
            .filter(|id| !done.contains(id) && !busy.contains(id))
            .filter(|id| {
                needs(id)
                    .blocks
                    .iter()
                    .all(|b| committed.contains(b) && !busy_tables.contains(b))
            })
            .copied()
            .collect();
        // Drop what waits on an entry outside the set and not done, until nothing changes.
        loop {
            let out: Vec<i32> = set
                .iter()
                .filter(|id| {
                    needs(id)
                        .post
                        .iter()
                        .any(|d| !done.contains(d) && !set.contains(d))
                })
                .copied()
                .collect();
            if out.is_empty() {
                break;
            }
            for id in out {
                set.remove(&id);
            }
        }
        self.post
            .iter()
            .filter(|id| set.contains(id))
            .copied()
            .collect()
    }

    pub fn of(toc: &Toc) -> Plan {
        let mut plan = Plan::default();
        let mut current = Section::PreData;
        for e in &toc.entries {
            if e.section != Section::None {
                current = e.section;
            }
            if e.has_block() {
                plan.blocks.push(e.dump_id);
            } else if restore_pass(e) != Pass::Main {
                plan.privileges.push(e.dump_id);
            } else if current == Section::PreData {
                plan.pre.push(e.dump_id);
            } else {
                plan.post.push(e.dump_id);
            }
        }
        // A table's data block depends on the table's definition.
        let blocks: HashSet<i32> = plan.blocks.iter().copied().collect();
        let mut of_table: HashMap<i32, Vec<i32>> = HashMap::new();
        for e in toc.entries.iter().filter(|e| blocks.contains(&e.dump_id)) {
            for d in &e.deps {
                of_table.entry(*d).or_default().push(e.dump_id);
            }
        }
        // Tables without a data block of their own: a partitioned table's rows are in its
        // partitions, whose COPYs a constraint on the parent (a foreign key recurses into
        // every partition) would wait on, or deadlock with. Which partitions a parent has is
        // not in its dependencies, so such an entry waits for all data, as it did before
        // post-data started early.
        let blockless: HashSet<i32> = toc
            .entries
            .iter()
            .filter(|e| e.desc == "TABLE" && !of_table.contains_key(&e.dump_id))
            .map(|e| e.dump_id)
            .collect();
        let post: HashSet<i32> = plan.post.iter().copied().collect();
        for e in toc.entries.iter().filter(|e| post.contains(&e.dump_id)) {
            let mut n = Needs::default();
            for d in &e.deps {
                if blocks.contains(d) {
                    n.blocks.push(*d);
                }
                n.blocks.extend(of_table.get(d).into_iter().flatten());
                if blockless.contains(d) {
                    n.blocks.extend(&plan.blocks);
                }
                if post.contains(d) {
                    n.post.push(*d);
                }
            }
            n.blocks.sort_unstable();
            n.blocks.dedup();
            plan.needs.insert(e.dump_id, n);
        }
        plan
    }
}

/// A `pg_restore --use-list` file naming these entries, in this order.
pub fn list_file(ids: &[i32]) -> String {
    ids.iter().map(|id| format!("{id};\n")).collect()
}

/// A directory-format dump's `toc.dat`, read and turned into the head of a custom archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirToc {
    /// The entries, as a custom archive's would read (`data_start` is the head's length).
    pub toc: Toc,
    /// Each entry with data: the file pg_dump wrote it into ("3051.dat", "blobs.toc").
    pub files: std::collections::BTreeMap<i32, String>,
    /// Header and TOC of a custom archive with the same entries, every data offset "not set":
    /// followed by the data blocks in TOC order it is an archive pg_restore reads from a pipe.
    pub custom_head: Vec<u8>,
    /// The archive's integer size, for [`BlockWriter`].
    pub int_size: usize,
}

/// Reads a directory dump's `toc.dat` (pg_dump `-Fd -Z0`; `pg_backup_directory.c`). It is a
/// custom archive's header and TOC with two differences: the format byte, and each entry's
/// tail, which names its data file instead of giving a flag and an offset.
pub fn read_dir_toc(toc_dat: &[u8]) -> Result<DirToc, ArchiveError> {
    if toc_dat.len() > MAX_HEAD {
        return Err(ArchiveError::TooLarge);
    }
    let mut r = Reader {
        buf: toc_dat,
        at: 0,
        int_size: 4,
    };
    let mut dir = DirLayout::default();
    let mut toc = match read_head(&mut r, Some(&mut dir)) {
        Ok(t) => t,
        Err(Short::More) => return Err(ArchiveError::Truncated("the table of contents")),
        Err(Short::Bad(e)) => return Err(e),
    };
    if r.at != toc_dat.len() {
        return Err(ArchiveError::Damaged {
            at: r.at as u64,
            what: format!("{} bytes after the TOC", toc_dat.len() - r.at),
        });
    }
    let mut head = Vec::with_capacity(toc_dat.len() + toc.entries.len() * 8);
    head.extend_from_slice(&toc_dat[..dir.format_at]);
    head.push(1);
    let mut at = dir.format_at + 1;
    let mut files = std::collections::BTreeMap::new();
    for (entry, (start, end, name)) in toc.entries.iter().zip(&dir.tails) {
        head.extend_from_slice(&toc_dat[at..*start]);
        if name.is_empty() {
            head.push(OFFSET_NO_DATA);
        } else {
            if !plain_file_name(name) {
                return Err(ArchiveError::FileName(name.clone()));
            }
            head.push(OFFSET_POS_NOT_SET);
            files.insert(entry.dump_id, name.clone());
        }
        head.extend(std::iter::repeat_n(0u8, dir.off_size));
        at = *end;
    }
    toc.data_start = head.len() as u64;
    Ok(DirToc {
        toc,
        files,
        custom_head: head,
        int_size: r.int_size,
    })
}

/// A name pg_dump gives a file of its directory ("3051.dat", "blobs_3060.toc",
/// "blob_16411.dat"): nothing that could leave the directory or hide in it.
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "toc.dat"
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// A directory dump's large-object list (`blobs.toc`, `blobs_<id>.toc`): one
/// `<oid> <file name>` line per large object, in the order they were dumped.
pub fn read_blobs_toc(text: &[u8]) -> Result<Vec<(u32, String)>, ArchiveError> {
    let text = std::str::from_utf8(text).map_err(|_| ArchiveError::Damaged {
        at: 0,
        what: "large-object list is not text".into(),
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = || ArchiveError::Damaged {
            at: n as u64,
            what: format!("large-object list line {:?}", line),
        };
        let (oid, name) = line.split_once(' ').ok_or_else(bad)?;
        let oid: u32 = oid.parse().map_err(|_| bad())?;
        if !plain_file_name(name) {
            return Err(ArchiveError::FileName(name.to_string()));
        }
        out.push((oid, name.to_string()));
    }
    Ok(out)
}

/// Writes custom-format data blocks: a block header, the data as length-framed chunks (one per
/// `write`), and the terminator only when told ([`BlockWriter::end`]). pg_restore ends a
/// table's COPY, or a large object, on that terminator and nowhere else; input that stops
/// before it is a truncated archive, which pg_restore refuses.
pub struct BlockWriter<W: std::io::Write> {
    out: W,
    int_size: usize,
}

/// pg_dump's own chunk size is 4 KiB to 1 MiB; pg_restore allocates what a chunk says.
const MAX_CHUNK: usize = 1 << 20;

impl<W: std::io::Write> BlockWriter<W> {
    pub fn new(out: W, int_size: usize) -> BlockWriter<W> {
        BlockWriter { out, int_size }
    }

    fn int(&mut self, v: i64) -> std::io::Result<()> {
        let mut b = [0u8; 9];
        b[0] = u8::from(v < 0);
        let m = v.unsigned_abs();
        for (i, x) in b[1..=self.int_size].iter_mut().enumerate() {
            *x = (m >> (8 * i)) as u8;
        }
        self.out.write_all(&b[..=self.int_size])
    }

    /// A table's data (`BLK_DATA`).
    pub fn begin_data(&mut self, dump_id: i32) -> std::io::Result<()> {
        self.out.write_all(&[BLK_DATA])?;
        self.int(i64::from(dump_id))
    }

    /// A BLOBS entry's large objects (`BLK_BLOBS`): each in [`Self::begin_lo`] ..
    /// [`Self::end_lo`], then [`Self::end`].
    pub fn begin_blobs(&mut self, dump_id: i32) -> std::io::Result<()> {
        self.out.write_all(&[BLK_BLOBS])?;
        self.int(i64::from(dump_id))
    }

    pub fn begin_lo(&mut self, oid: u32) -> std::io::Result<()> {
        self.int(i64::from(oid))
    }

    /// Ends a large object (a zero-length chunk).
    pub fn end_lo(&mut self) -> std::io::Result<()> {
        self.int(0)
    }

    /// Ends the block.
    pub fn end(&mut self) -> std::io::Result<()> {
        self.int(0)?;
        self.out.flush()
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

impl<W: std::io::Write> std::io::Write for BlockWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // An empty chunk would read as the terminator.
        if data.is_empty() {
            return Ok(0);
        }
        let n = data.len().min(MAX_CHUNK);
        self.int(n as i64)?;
        self.out.write_all(&data[..n])?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real archive: `pg_dump -Fc -Z0` (PostgreSQL 15.18) into a pipe, of the schema in
    /// testdata/archive.sql (tables with rows, a large object, a sequence, a matview, grants).
    pub(super) const ARCHIVE: &[u8] = include_bytes!("testdata/archive.dump");

    pub(super) fn scan(chunks: &[&[u8]]) -> Result<Vec<Event>, ArchiveError> {
        let mut s = Scanner::new();
        let mut ev = Vec::new();
        for c in chunks {
            s.push(c, &mut |e| ev.push(e))?;
        }
        s.finish(&mut |e| ev.push(e))?;
        Ok(ev)
    }

    pub(super) fn toc_of(ev: &[Event]) -> &Toc {
        match &ev[0] {
            Event::Toc(t) => t,
            e => panic!("first event {e:?}"),
        }
    }

    #[test]
    fn reads_the_toc_and_every_block_of_a_real_archive() {
        let ev = scan(&[ARCHIVE]).unwrap();
        let toc = toc_of(&ev);
        assert_eq!(toc.version, (1, 14, 0));
        let descs: Vec<&str> = toc.entries.iter().map(|e| e.desc.as_str()).collect();
        for d in [
            "TABLE",
            "TABLE DATA",
            "BLOB",
            "BLOBS",
            "SEQUENCE SET",
            "ACL",
        ] {
            assert!(descs.contains(&d), "{d} in {descs:?}");
        }
        let with_blocks: Vec<i32> = toc
            .entries
            .iter()
            .filter(|e| e.has_block())
            .map(|e| e.dump_id)
            .collect();
        assert!(toc
            .entries
            .iter()
            .all(|e| e.has_block() == (e.data == DataState::NotSet)));
        // Blocks come in TOC order, each start right after the previous end, and the last
        // ends with the archive.
        let mut at = toc.data_start;
        let mut seen = Vec::new();
        for pair in ev[1..].chunks(2) {
            match pair {
                [Event::BlockStart { dump_id, at: s }, Event::BlockEnd { dump_id: d2, end }] => {
                    assert_eq!((dump_id, *s), (d2, at));
                    assert_eq!(
                        ARCHIVE[*s as usize],
                        if seen.len() + 1 == with_blocks.len() {
                            BLK_BLOBS
                        } else {
                            BLK_DATA
                        }
                    );
                    seen.push(*dump_id);
                    at = *end;
                }
                other => panic!("unexpected events {other:?}"),
            }
        }
        assert_eq!(seen, with_blocks);
        assert_eq!(at, ARCHIVE.len() as u64);
    }

    #[test]
    fn offsets_pg_dump_recorded_match_the_blocks() {
        let file = include_bytes!("testdata/archive_file.dump");
        let ev = scan(&[file]).unwrap();
        let toc = toc_of(&ev);
        let mut set = 0;
        for e in &ev[1..] {
            if let Event::BlockStart { dump_id, at } = e {
                let entry = toc.entries.iter().find(|t| t.dump_id == *dump_id).unwrap();
                assert_eq!(entry.data, DataState::Set(*at), "{entry:?}");
                set += 1;
            }
        }
        assert_eq!(set, 3);
        // Same entries as the piped archive, in the same order.
        let piped = scan(&[ARCHIVE]).unwrap();
        let ids = |t: &Toc| t.entries.iter().map(|e| e.dump_id).collect::<Vec<_>>();
        assert_eq!(ids(toc), ids(toc_of(&piped)));
        assert_eq!(Plan::of(toc), Plan::of(toc_of(&piped)));
    }

    /// `data` cut at `cuts` (any order).
    pub(super) fn cut(data: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for c in cuts {
            pieces.push(&data[last..c]);
            last = c;
        }
        pieces.push(&data[last..]);
        pieces
    }

    proptest::proptest! {
        /// Whatever the piece sizes, the same events.
        #[test]
        fn pieces_do_not_matter(cuts in proptest::collection::vec(0usize..ARCHIVE.len(), 0..40)) {
            let pieces = cut(ARCHIVE, cuts);
            proptest::prop_assert_eq!(scan(&pieces).unwrap(), scan(&[ARCHIVE]).unwrap());
        }
    }

    #[test]
    fn a_cut_archive_is_truncated_and_damage_is_named() {
        let ev = scan(&[ARCHIVE]).unwrap();
        let toc = toc_of(&ev);
        let cut = &ARCHIVE[..ARCHIVE.len() - 3];
        assert_eq!(
            scan(&[cut]).unwrap_err(),
            ArchiveError::Truncated("a data block")
        );
        assert_eq!(
            scan(&[&ARCHIVE[..100]]).unwrap_err(),
            ArchiveError::Truncated("the table of contents")
        );
        let mut bad = ARCHIVE.to_vec();
        bad[toc.data_start as usize] = 7;
        assert!(matches!(
            scan(&[&bad]).unwrap_err(),
            ArchiveError::Damaged { what, .. } if what == "data block type 7"
        ));
        assert_eq!(
            scan(&[b"PK\x03\x04 a zip"]).unwrap_err(),
            ArchiveError::NotCustom
        );
        let mut newer = ARCHIVE.to_vec();
        newer[6] = 17;
        assert_eq!(scan(&[&newer]).unwrap_err(), ArchiveError::Version(1, 17));
    }

    /// `pg_dump -Fd -Z0` of the same database (testdata/archive.sql), PostgreSQL 15.
    fn dir_file(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/source/testdata/archive_dir");
        std::fs::read(dir.join(name)).unwrap()
    }

    /// The whole directory as one custom archive: head, then every block in TOC order.
    fn transcode(d: &DirToc) -> Vec<u8> {
        use std::io::Write as _;
        let mut w = BlockWriter::new(d.custom_head.clone(), d.int_size);
        for e in d.toc.entries.iter().filter(|e| e.has_block()) {
            let file = &d.files[&e.dump_id];
            if e.desc == "BLOBS" {
                w.begin_blobs(e.dump_id).unwrap();
                for (oid, name) in read_blobs_toc(&dir_file(file)).unwrap() {
                    w.begin_lo(oid).unwrap();
                    w.write_all(&dir_file(&name)).unwrap();
                    w.end_lo().unwrap();
                }
            } else {
                w.begin_data(e.dump_id).unwrap();
                // In small pieces: each becomes a chunk of its own.
                for piece in dir_file(file).chunks(1000) {
                    w.write_all(piece).unwrap();
                }
            }
            w.end().unwrap();
        }
        std::mem::take(w.get_mut())
    }

    #[test]
    fn a_directory_toc_becomes_a_custom_archive() {
        let d = read_dir_toc(&dir_file("toc.dat")).unwrap();
        // The head parses as a custom archive's, to the same entries.
        let (head_toc, _) = parse_head(&d.custom_head).unwrap().unwrap();
        assert_eq!(head_toc, d.toc);
        assert_eq!(d.toc.data_start, d.custom_head.len() as u64);
        let names: Vec<&str> = d.files.values().map(String::as_str).collect();
        assert!(names.contains(&"blobs.toc"), "{names:?}");
        assert_eq!(names.len(), 3, "{names:?}");
        // Same entries as the custom archive pg_dump wrote of the same schema.
        let piped = scan(&[ARCHIVE]).unwrap();
        let shape = |t: &Toc| {
            t.entries
                .iter()
                .map(|e| (e.desc.clone(), e.tag.clone(), e.has_block()))
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(&d.toc), shape(toc_of(&piped)));
        // Transcoded whole, it scans: every block in TOC order, ending with the archive.
        let all = transcode(&d);
        let ev = scan(&[&all]).unwrap();
        let starts: Vec<i32> = ev
            .iter()
            .filter_map(|e| match e {
                Event::BlockStart { dump_id, .. } => Some(*dump_id),
                _ => None,
            })
            .collect();
        assert_eq!(starts, Plan::of(&d.toc).blocks);
        match ev.last() {
            Some(Event::BlockEnd { end, .. }) => assert_eq!(*end, all.len() as u64),
            e => panic!("{e:?}"),
        }
    }

    /// The newest installed pg_restore (PostgreSQL is installed wherever the tests run).
    fn pg_restore() -> std::path::PathBuf {
        let mut found: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL client tools under /usr/lib/postgresql")
            .flatten()
            .filter_map(|e| {
                let bin = e.path().join("bin/pg_restore");
                Some((e.file_name().to_str()?.parse().ok()?, bin))
            })
            .filter(|(_, p)| p.exists())
            .collect();
        found.sort();
        found.pop().expect("a pg_restore").1
    }

    /// pg_restore's output for `args`, the archive on stdin when `stdin` is given.
    pub(super) fn run_pg_restore(args: &[&str], stdin: Option<&[u8]>) -> String {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new(pg_restore())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let data = stdin.unwrap_or_default().to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Without the random `\restrict` key pg_restore puts in every script.
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// What pg_restore itself makes of the directory and of its transcoding: the same
    /// entries (`--list`, header comments aside) and the same restore script, data and large
    /// objects included.
    #[test]
    fn pg_restore_reads_the_transcoding_as_it_reads_the_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/source/testdata/archive_dir");
        let dir = dir.to_str().unwrap();
        let d = read_dir_toc(&dir_file("toc.dat")).unwrap();
        let entries = |list: String| {
            list.lines()
                .filter(|l| !l.starts_with(';') && !l.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let listed = entries(run_pg_restore(&["--list", dir], None));
        assert!(listed.len() > 10, "{listed:?}");
        assert_eq!(
            entries(run_pg_restore(&["--list"], Some(&d.custom_head))),
            listed
        );
        let script = run_pg_restore(&["-f", "-", dir], None);
        assert!(script.contains("COPY public.moves"), "{script}");
        assert!(script.contains("lo_open('7001'"), "{script}");
        let transcoded = run_pg_restore(&["-f", "-"], Some(&transcode(&d)));
        assert!(transcoded == script, "the scripts differ");
    }

    #[test]
    fn directory_tocs_refuse_what_they_cannot_be() {
        assert_eq!(
            read_dir_toc(ARCHIVE).unwrap_err(),
            ArchiveError::NotDirectory
        );
        let toc = dir_file("toc.dat");
        assert_eq!(
            read_dir_toc(&toc[..toc.len() - 2]).unwrap_err(),
            ArchiveError::Truncated("the table of contents")
        );
        let mut gz = toc.clone();
        gz[12] = 6; // PostgreSQL 15's compression level int (1.14): -Z6
        assert_eq!(
            read_dir_toc(&gz).unwrap_err(),
            ArchiveError::CompressedDirectory
        );
        assert_eq!(
            read_blobs_toc(b"7001 blob_7001.dat\n12 blob_12.dat\n").unwrap(),
            [
                (7001, "blob_7001.dat".to_string()),
                (12, "blob_12.dat".to_string())
            ]
        );
        for bad in [
            &b"7001 ../x\n"[..],
            b"x blob.dat\n",
            b"7001\n",
            b"1 toc.dat\n",
        ] {
            assert!(read_blobs_toc(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plan_follows_pg_restore_sections_and_passes() {
        let ev = scan(&[ARCHIVE]).unwrap();
        let toc = toc_of(&ev);
        let plan = Plan::of(toc);
        let by_id = |id: &i32| toc.entries.iter().find(|e| e.dump_id == *id).unwrap();
        let descs = |ids: &[i32]| {
            ids.iter()
                .map(|i| by_id(i).desc.clone())
                .collect::<Vec<_>>()
        };
        let pre = descs(&plan.pre);
        let post = descs(&plan.post);
        let privileges = descs(&plan.privileges);
        assert!(pre.contains(&"TABLE".to_string()) && pre.contains(&"BLOB".to_string()));
        assert!(
            !pre.iter().any(|d| d == "ACL"),
            "ACLs wait for the ACL pass: {pre:?}"
        );
        assert!(
            pre.contains(&"COMMENT".to_string()),
            "a comment follows its table: {pre:?}"
        );
        for d in ["SEQUENCE SET", "INDEX", "FK CONSTRAINT"] {
            assert!(post.contains(&d.to_string()), "{d} in {post:?}");
        }
        for d in ["ACL", "MATERIALIZED VIEW DATA"] {
            assert!(privileges.contains(&d.to_string()), "{d} in {privileges:?}");
            assert!(!post.contains(&d.to_string()), "{d} not in {post:?}");
        }
        assert_eq!(descs(&plan.blocks), ["TABLE DATA", "TABLE DATA", "BLOBS"]);
        let mut all: Vec<i32> = [
            plan.pre.clone(),
            plan.blocks.clone(),
            plan.post.clone(),
            plan.privileges.clone(),
        ]
        .concat();
        all.sort_unstable();
        let mut ids: Vec<i32> = toc.entries.iter().map(|e| e.dump_id).collect();
        ids.sort_unstable();
        assert_eq!(all, ids, "every entry in exactly one run");
        assert_eq!(list_file(&[3, 12]), "3;\n12;\n");
    }

    /// pg_restore -j's rule, as [`Plan::ready`] follows it: an index or constraint waits for
    /// its table's data (not only its definition), a foreign key for both tables' data and
    /// the referenced key, and nothing waits for a table it does not depend on.
    /// A foreign key on a partitioned table (no data block: its rows are in the partitions)
    /// waits for every table's data; an index on a partition waits for that partition only.
    #[test]
    fn post_data_on_a_table_without_data_waits_for_all_data() {
        let entry =
            |dump_id: i32, desc: &str, section: Section, data: DataState, deps: &[i32]| TocEntry {
                dump_id,
                had_dumper: data != DataState::NoData,
                tag: format!("e{dump_id}"),
                desc: desc.into(),
                namespace: Some("public".into()),
                owner: Some("app".into()),
                section,
                data,
                deps: deps.to_vec(),
            };
        use DataState::{NoData, NotSet};
        use Section::{Data, PostData, PreData};
        let toc = Toc {
            version: (1, 14, 0),
            data_start: 0,
            compressed: false,
            entries: vec![
                entry(1, "TABLE", PreData, NoData, &[]), // partitioned parent
                entry(2, "TABLE", PreData, NoData, &[1]), // its partition
                entry(3, "TABLE", PreData, NoData, &[]), // a plain table
                entry(4, "TABLE DATA", Data, NotSet, &[2]),
                entry(5, "TABLE DATA", Data, NotSet, &[3]),
                entry(6, "INDEX", PostData, NoData, &[2]),
                entry(7, "FK CONSTRAINT", PostData, NoData, &[1, 3]),
            ],
        };
        let plan = Plan::of(&toc);
        assert_eq!(plan.needs[&6].blocks, [4]);
        assert_eq!(plan.needs[&7].blocks, [4, 5]);
    }

    #[test]
    fn post_data_waits_for_its_tables_data_and_nothing_else() {
        let ev = scan(&[ARCHIVE]).unwrap();
        let toc = toc_of(&ev);
        let plan = Plan::of(toc);
        let id = |desc: &str, tag: &str| {
            toc.entries
                .iter()
                .find(|e| e.desc == desc && e.tag == tag)
                .unwrap_or_else(|| panic!("{desc} {tag}"))
                .dump_id
        };
        let accounts = id("TABLE DATA", "accounts");
        let moves = id("TABLE DATA", "moves");
        let pkey = id("CONSTRAINT", "accounts accounts_pkey");
        let index = id("INDEX", "moves_account");
        let fk = id("FK CONSTRAINT", "moves moves_account_fkey");
        let seq = id("SEQUENCE SET", "ticket");
        assert_eq!(plan.needs[&pkey].blocks, [accounts]);
        assert_eq!(plan.needs[&index].blocks, [moves]);
        assert_eq!(plan.needs[&fk].blocks, [accounts, moves]);
        assert!(
            plan.needs[&fk].post.contains(&pkey),
            "{:?}",
            plan.needs[&fk]
        );
        let set = |ids: &[i32]| ids.iter().copied().collect::<HashSet<i32>>();
        let none = HashSet::new();
        // Before any data: only what needs none (the sequence's value).
        assert_eq!(plan.ready(&none, &none, &none, &none), [seq]);
        // `accounts` committed: its key; the foreign key waits for `moves` too.
        assert_eq!(
            plan.ready(&set(&[accounts]), &none, &none, &none),
            [seq, pkey]
        );
        // `moves` committed: its index; the foreign key also needs the key, not done yet.
        assert_eq!(
            plan.ready(&set(&[moves]), &none, &none, &none),
            [seq, index]
        );
        // Both: everything at once (one pg_restore puts the key before the foreign key).
        let both = set(&[accounts, moves]);
        let mut all = plan.ready(&both, &none, &none, &none);
        all.sort_unstable();
        let mut post = plan.post.clone();
        post.sort_unstable();
        assert_eq!(all, post);
        // The key running elsewhere: the foreign key waits for it to be done; nothing else
        // on `accounts` runs beside it.
        let busy = set(&[pkey]);
        assert_eq!(
            plan.ready(&both, &none, &busy, &set(&[accounts])),
            [seq, index]
        );
        let done = set(&[pkey, seq]);
        assert_eq!(plan.ready(&both, &done, &none, &none), [index, fk]);
    }
}
