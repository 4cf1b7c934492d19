//! Re-chunks an archive's data on its way into `pg_restore`.
//!
//! `pg_dump -Fc -Z0` (every backhaul dump) writes one chunk per row: a 1.2 GB dump of two
//! tables held 3.2 million chunks of ~160 bytes. pg_restore hands each chunk to the server as
//! its own CopyData message, so the server's COPY parses millions of tiny messages, and
//! pg_restore makes a read call for each. Gathering a block's chunks into 256 KiB chunks gives
//! the same bytes in a few thousand messages. Measured on the bench's dataset: pg_restore's CPU
//! fell and the server's CPU time was lower in every paired run; in wall time the gain stayed
//! within the 2-core test VM's noise (bench/RESULTS-2026-12-06-settled.md).
//!
//! pg_restore treats a block's chunks as one byte stream: uncompressed chunks go straight to
//! COPY (or `lo_write`), which accept any split, and compressed ones feed one decompressor
//! per block. So only the framing changes: the header and TOC, block headers, large-object
//! OIDs and terminators are written as they were, and `pg_restore`'s script of the result is
//! identical (tested). An archive the parser does not read (an unknown version, damage) goes
//! through unchanged from the point it stopped, for pg_restore to judge as it would have.
//!
//! It adds no end-of-input of its own: it sits after [`crate::read_path`]'s hold-back, and
//! writes a block's terminator only once the terminator itself has arrived, so what pg_restore
//! receives before the checksum is verified still ends short of the archive's end.

use std::io::{self, Write};

#[cfg(test)]
use super::ArchiveError;
use super::{BlockWriter, Scanner, Token, BLK_BLOBS, BLK_DATA};

/// pg_restore allocates a buffer the size of the largest chunk; 256 KiB is large enough that
/// per-message costs vanish and small enough for any memory budget.
const CHUNK: usize = 256 << 10;

pub struct Reframer<W: Write> {
    /// `None` once the rest goes through unchanged.
    scanner: Option<Scanner>,
    emit: Emit<W>,
    /// Bytes taken so far.
    seen: u64,
}

struct Emit<W: Write> {
    w: BlockWriter<W>,
    /// A chunk being gathered.
    buf: Vec<u8>,
    /// Set by the head of an archive pg_dump compressed, which was then written with all
    /// that followed it: from here on the input goes through unchanged.
    verbatim: bool,
    /// The first write error; nothing more is written after it.
    error: Option<io::Error>,
}

impl<W: Write> Reframer<W> {
    pub fn new(out: W) -> Reframer<W> {
        Reframer {
            scanner: Some(Scanner::new()),
            emit: Emit {
                w: BlockWriter::new(out, 4),
                buf: Vec::new(),
                verbatim: false,
                error: None,
            },
            seen: 0,
        }
    }

    /// The archive ended. A truncated one still gets its last gathered bytes, as pg_restore
    /// would have received them: it then reports the truncation itself.
    pub fn finish(&mut self) -> io::Result<()> {
        if let Some(mut s) = self.scanner.take() {
            // A small archive's head may not have been parsed yet.
            let emit = &mut self.emit;
            let parsed = s.finish_tokens(&mut |t| emit.token(t));
            if let Some(e) = self.emit.error.take() {
                return Err(e);
            }
            if parsed.is_err() && s.blocks.is_none() {
                // The head never parsed (a short or unknown archive): as it came.
                self.emit.w.get_mut().write_all(&s.head)?;
            }
        }
        self.emit.flush_chunk()?;
        self.emit.w.get_mut().flush()
    }

    /// The writer underneath, with anything gathered not written.
    pub fn into_inner(self) -> W {
        self.emit.w.out
    }

    /// The parser stopped (not an archive it reads, or damage) within `data`: what it had not
    /// consumed goes through unchanged, and so does everything after.
    fn give_up(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(mut s) = self.scanner.take() else {
            return Ok(());
        };
        self.emit.flush_chunk()?;
        if s.blocks.is_none() {
            // Still in the head: the scanner kept every byte so far.
            return self
                .emit
                .w
                .get_mut()
                .write_all(&std::mem::take(&mut s.head));
        }
        // Damage in the data area. pg_restore fails on it either way; it gets the bytes from
        // the damaged spot on (when they are all in this piece) to say where.
        let unread = (self.seen - s.pos).min(data.len() as u64) as usize;
        self.emit
            .w
            .get_mut()
            .write_all(&data[data.len() - unread..])
    }
}

impl<W: Write> Write for Reframer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(scanner) = &mut self.scanner else {
            return self.emit.w.get_mut().write(data);
        };
        self.seen += data.len() as u64;
        let emit = &mut self.emit;
        let parsed = scanner.push_tokens(data, &mut |t| emit.token(t));
        if let Some(e) = self.emit.error.take() {
            return Err(e);
        }
        if self.emit.verbatim {
            self.scanner = None;
        } else if parsed.is_err() {
            self.give_up(data)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit.w.get_mut().flush()
    }
}

impl<W: Write> Emit<W> {
    fn token(&mut self, t: Token<'_>) {
        if self.verbatim || self.error.is_some() {
            return;
        }
        if let Err(e) = self.apply(t) {
            self.error = Some(e);
        }
    }

    fn apply(&mut self, t: Token<'_>) -> io::Result<()> {
        match t {
            // Nothing to gain on blocks pg_dump compressed (its chunks are already large):
            // they go through exactly as they are.
            Token::Head { toc, raw, rest, .. } if toc.compressed => {
                let out = self.w.get_mut();
                out.write_all(raw)?;
                out.write_all(rest)?;
                self.verbatim = true;
            }
            Token::Head { int_size, raw, .. } => {
                self.w.int_size = int_size;
                self.w.get_mut().write_all(raw)?;
            }
            Token::BlockStart { kind, dump_id, .. } => match kind {
                BLK_DATA => self.w.begin_data(dump_id)?,
                BLK_BLOBS => self.w.begin_blobs(dump_id)?,
                _ => unreachable!("the parser refuses other block types"),
            },
            Token::LoStart(oid) => self.w.int(oid)?,
            Token::Payload(b) => {
                self.buf.extend_from_slice(b);
                if self.buf.len() >= CHUNK {
                    self.flush_chunk()?;
                }
            }
            Token::LoEnd | Token::BlockEnd { .. } => {
                self.flush_chunk()?;
                self.w.int(0)?;
            }
        }
        Ok(())
    }

    /// Writes what was gathered as one chunk (none when nothing was: an empty chunk would
    /// read as a terminator).
    fn flush_chunk(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.w.int(self.buf.len() as i64)?;
            self.w.get_mut().write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cut, run_pg_restore, scan, toc_of, ARCHIVE};
    use super::super::{BlockWriter, Event, Scanner, Token};
    use super::*;

    const FILE_ARCHIVE: &[u8] = include_bytes!("../testdata/archive_file.dump");
    const GZ_ARCHIVE: &[u8] = include_bytes!("../testdata/archive_gz.dump");

    fn reframe(pieces: &[&[u8]]) -> Vec<u8> {
        let mut r = Reframer::new(Vec::new());
        for p in pieces {
            r.write_all(p).unwrap();
        }
        r.finish().unwrap();
        r.into_inner()
    }

    /// Each data block's id and contents, and how many chunks carried them all.
    fn blocks(archive: &[u8]) -> (Vec<(i32, Vec<u8>)>, usize) {
        let mut out: Vec<(i32, Vec<u8>)> = Vec::new();
        let mut chunks = 0;
        let mut s = Scanner::new();
        s.push_tokens(archive, &mut |t| match t {
            Token::BlockStart { dump_id, .. } => out.push((dump_id, Vec::new())),
            Token::Payload(b) => {
                chunks += 1;
                out.last_mut().unwrap().1.extend_from_slice(b);
            }
            _ => {}
        })
        .unwrap();
        (out, chunks)
    }

    /// pg_restore's script of the re-chunked archive is the original's, for an archive
    /// written into a pipe and for one with data offsets in its TOC (which the re-chunking
    /// makes stale: pg_restore reading stdin does not seek).
    #[test]
    fn pg_restore_reads_the_same_archive() {
        for original in [ARCHIVE, FILE_ARCHIVE] {
            let out = reframe(&[original]);
            assert!(out.len() < original.len(), "no chunk headers saved");
            // In pieces, the head parsed only at the end (smaller than the scanner's first try).
            assert_eq!(reframe(&[&original[..1], &original[1..]]), out);
            let (want, many) = blocks(original);
            let (got, few) = blocks(&out);
            assert_eq!(got, want);
            assert!(few < many / 10, "{few} chunks against {many}");
            let toc = |a: &[u8]| toc_of(&scan(&[a]).unwrap()).entries.clone();
            assert_eq!(toc(&out), toc(original));
            let script = run_pg_restore(&["-f", "-"], Some(original));
            assert!(script.contains("COPY public.moves"), "{script}");
            assert!(script.contains("lo_open('7001'"), "{script}");
            assert!(
                run_pg_restore(&["-f", "-"], Some(&out)) == script,
                "the scripts differ"
            );
        }
    }

    /// A block larger than a chunk: its rows (one chunk each, as pg_dump writes them) come out
    /// in chunks of `CHUNK` bytes, the last one shorter, with the same contents.
    #[test]
    fn a_large_block_goes_in_chunks_of_chunk_size() {
        let ev = scan(&[ARCHIVE]).unwrap();
        let toc = toc_of(&ev);
        let table = toc.entries.iter().find(|e| e.desc == "TABLE DATA").unwrap();
        let row = b"12345\tsome text of a row, about a hundred bytes long, as a table's rows often are....\n";
        let mut archive = ARCHIVE[..toc.data_start as usize].to_vec();
        let mut w = BlockWriter::new(&mut archive, 4);
        w.begin_data(table.dump_id).unwrap();
        for _ in 0..10_000 {
            w.write_all(row).unwrap();
        }
        w.end().unwrap();
        let out = reframe(&[&archive]);
        let (got, chunks) = blocks(&out);
        let (want, rows) = blocks(&archive);
        assert_eq!(got, want);
        assert_eq!(rows, 10_000);
        let total = row.len() * 10_000;
        assert_eq!(chunks, total.div_ceil(CHUNK));
    }

    proptest::proptest! {
        /// Whatever the write sizes, the same output.
        #[test]
        fn pieces_do_not_matter(cuts in proptest::collection::vec(0usize..ARCHIVE.len(), 0..40)) {
            let pieces = cut(ARCHIVE, cuts);
            proptest::prop_assert_eq!(reframe(&pieces), reframe(&[ARCHIVE]));
        }
    }

    /// What the parser does not read goes through byte for byte: an archive pg_dump
    /// compressed, a newer archive version, something that is no archive, a cut head.
    #[test]
    fn other_input_passes_unchanged() {
        let mut newer = ARCHIVE.to_vec();
        newer[6] = 17;
        for input in [
            GZ_ARCHIVE,
            &newer[..],
            b"PK\x03\x04 a zip",
            &ARCHIVE[..100],
            b"",
        ] {
            assert_eq!(reframe(&[input]), input);
            let halves = input.split_at(input.len() / 2);
            assert_eq!(reframe(&[halves.0, halves.1]), input);
        }
        assert!(scan(&[GZ_ARCHIVE]).is_ok_and(|ev| toc_of(&ev).compressed));
    }

    /// Damage and truncation stay what they are: pg_restore must refuse the output as it
    /// refuses the input, never receive a completed archive.
    #[test]
    fn damage_and_truncation_survive() {
        let ev = scan(&[ARCHIVE]).unwrap();
        let start = toc_of(&ev).data_start as usize;
        let mut bad = ARCHIVE.to_vec();
        bad[start] = 7;
        assert_eq!(reframe(&[&bad]), bad);

        for cut in [
            ARCHIVE.len() - 1,
            ARCHIVE.len() - 3,
            ARCHIVE.len() - 200,
            start + 40,
        ] {
            let out = reframe(&[&ARCHIVE[..cut]]);
            assert_eq!(
                scan(&[&out]).unwrap_err(),
                ArchiveError::Truncated("a data block"),
                "cut at {cut}"
            );
        }
        // A block's terminator is written only once it has arrived: everything but the last
        // byte gives no more than the last block's gathered contents, no end.
        let out = reframe(&[&ARCHIVE[..ARCHIVE.len() - 1]]);
        assert!(!matches!(
            scan(&[&out]).map(|ev| ev.into_iter().last()),
            Ok(Some(Event::BlockEnd { .. }))
        ));
    }
}
