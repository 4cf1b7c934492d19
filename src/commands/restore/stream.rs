//! The default restore: the object streamed through the read path into one
//! `pg_restore --single-transaction` on stdin, the archive's tail withheld until the checksum
//! matched (see [`crate::read_path`]), so a damaged object commits nothing. On failure
//! pg_restore is killed while its stdin is still open: a clean end of input would commit.
//! The data goes in large chunks, not pg_dump's one per row ([`Reframer`]).

use anyhow::Context as _;
use tokio_util::io::SyncIoBridge;
use tokio_util::sync::CancellationToken;

use super::PgTarget;
use crate::commands::Interrupted;
use crate::read_path::{self, Consumer, Decode, Expect, Fed, FeedError};
use crate::source::pg_archive::Reframer;
use crate::source::postgres::{self as pg, RestoreOpts};

pub(super) async fn restore(
    src: SyncIoBridge<crate::storage::Reader>,
    decode: Decode,
    expect: Option<Expect>,
    target: &PgTarget,
    opts: &RestoreOpts,
    cancel: &CancellationToken,
) -> anyhow::Result<Fed> {
    let opts = RestoreOpts {
        jobs: None,
        ..opts.clone()
    };
    let mut child = pg::spawn_restore(
        &target.tools,
        &target.conn,
        &target.database,
        &opts,
        pg::RestoreRun::stdin(),
        target.redactor.clone(),
    )?;
    let stdin = child.take_stdin_file().context("pg_restore has no stdin")?;
    // Interrupted: the feed must stop reading too, not decode the rest of the object.
    let abandoned = read_path::Abandoned::default();
    let src = abandoned.reader(src);
    let task = tokio::task::spawn_blocking(move || {
        // After the hold-back: the re-chunked archive is no closer to its end than the
        // withheld one (see `Reframer`).
        let mut sink = Reframer::new(stdin);
        let r = read_path::feed(src, &decode, &mut sink, expect.as_ref(), Consumer::Strict)
            .and_then(|fed| sink.finish().map(|()| fed).map_err(FeedError::Sink));
        // The pipe goes back to the caller: it must stay open until pg_restore is killed on
        // failure, or pg_restore would see a clean end of input.
        (r, sink.into_inner())
    });
    let (res, stdin) = tokio::select! {
        j = task => j.context("restore task panicked")?,
        _ = cancel.cancelled() => {
            let _ = child.terminate().await;
            return Err(Interrupted.into());
        }
    };
    match res {
        Ok(fed) => {
            drop(stdin);
            tokio::select! {
                r = child.wait() => { r?; }
                _ = cancel.cancelled() => return Err(Interrupted.into()),
            }
            Ok(fed)
        }
        Err(FeedError::Sink(e)) => {
            // pg_restore stopped reading: its exit status and stderr are the real cause.
            drop(stdin);
            child.wait().await?;
            Err(FeedError::Sink(e).into())
        }
        Err(e) => {
            let _ = child.terminate().await;
            drop(stdin);
            Err(anyhow::Error::from(e).context("restore stopped; nothing was committed"))
        }
    }
}
