//! One target, start to finish: its dump streams into a two-phase upload that is finished
//! only when the dump tool exited 0 and every part is in, and aborted otherwise; then its
//! manifest.

use super::*;

/// Runs one target under the job's cancellation and timeout, and turns success into an
/// artifact plus manifest, failure into nothing at all.
pub(super) async fn run_target(job: &Job, t: &Target) -> Result<Manifest, TargetError> {
    if t.directory {
        return super::dir::run_dir_target(job, t).await;
    }
    let started_at = Utc::now();
    let mut upload = job
        .storage
        .begin(&t.key)
        .await
        .map_err(anyhow::Error::from)?;
    let deadline = async {
        match job.timeout {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let produced = tokio::select! {
        r = produce(job, t, upload.as_mut()) => r.map_err(TargetError::Other),
        _ = job.cancel.cancelled() => Err(TargetError::Interrupted),
        _ = deadline => Err(TargetError::TimedOut(job.timeout.unwrap_or_default())),
    };
    let Produced {
        stats,
        source,
        globals,
        contents,
    } = match produced {
        Ok(v) => v,
        Err(e) => {
            abort_upload(upload.as_mut(), &t.key).await;
            return Err(e);
        }
    };
    let stored = match upload.finish().await {
        Ok(stored) => stored,
        Err(e) => {
            // A part that failed late, or CompleteMultipartUpload itself failing or refused
            // (the key is taken), leaves the multipart upload open: abort it here rather than
            // trust the background abort in the upload's Drop, which the process may exit
            // before running. Nothing is deleted: whatever is under the key now is not ours
            // (the storage recognises our own object behind a lost answer as success).
            abort_upload(upload.as_mut(), &t.key).await;
            return Err(anyhow::Error::from(e).into());
        }
    };
    let m = Manifest {
        contents,
        globals,
        ..super::manifest_of(job, t, started_at, &stats, &stored, source)
    };
    if let Err(e) = job
        .storage
        .put_new(&t.manifest_key, m.to_bytes(), "application/json")
        .await
    {
        if let StorageError::Exists(_) = e {
            // Another run's manifest: the store let both runs create the artifact (it does
            // not enforce If-None-Match atomically, as moto does not under a close race), so
            // the object is now ours and the manifest theirs. Deleting would leave their
            // manifest with nothing at all; `verify` reports the ETag mismatch instead.
            return Err(anyhow::Error::from(e)
                .context(format!(
                    "writing the manifest: the store let two runs create {} (no atomic If-None-Match); the object is this run's, the manifest another's, and `verify` will fail it",
                    t.key
                ))
                .into());
        }
        // An artifact without its manifest cannot be verified: do not leave it looking done.
        // The artifact is ours (we just created it), so removing it touches no other run.
        let _ = job.storage.delete(std::slice::from_ref(&t.key)).await;
        return Err(anyhow::Error::from(e)
            .context("writing the manifest")
            .into());
    }
    still_there(job, t, &m).await?;
    Ok(m)
}

/// Tries of the HEAD that checks an object is still there after its manifest was written.
const HEAD_ATTEMPTS: u64 = 3;

/// After the manifest is written, the object must still be the one it describes: a prune
/// that ran between the object and its manifest (with a grace period shorter than this run's
/// gap) could have deleted it. Then this backup did not happen, whatever was uploaded: it
/// fails loudly, and its manifest goes too rather than vouch for nothing.
pub(super) async fn still_there(job: &Job, t: &Target, m: &Manifest) -> Result<(), TargetError> {
    // A transient failure to ask is not an answer: asked a few times (each with the client's
    // own retries) before the run gives up on knowing.
    let mut head = job.storage.head(&t.key).await;
    for attempt in 1..HEAD_ATTEMPTS {
        if head.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
        head = job.storage.head(&t.key).await;
    }
    let gone = match head {
        Ok(Some(info)) if m.etag.is_none() || info.etag == m.etag => return Ok(()),
        Ok(Some(info)) => format!(
            "was replaced after it was written (ETag {} now, {} written)",
            info.etag.as_deref().unwrap_or("none"),
            m.etag.as_deref().unwrap_or("none")
        ),
        Ok(None) => "was deleted after it was written (a concurrent prune?)".to_string(),
        Err(e) => format!("could not be checked after the manifest was written: {e}"),
    };
    if gone.starts_with("was deleted") {
        let _ = job
            .storage
            .delete(std::slice::from_ref(&t.manifest_key))
            .await;
    }
    Err(anyhow::anyhow!("the artifact {} {gone}: this backup is lost", t.key).into())
}

/// Stops the dump tool after its stream failed and names the root cause. When the upload
/// failed (S3 unreachable, a part rejected), that is the cause: the tool then only died of the
/// EPIPE/SIGPIPE we caused by closing its pipe, and reporting "killed by signal 13" would hide
/// why the backup failed. When reading the stream failed, the tool's own failure, if any, is
/// the cause (the stream only saw EOF/EPIPE).
pub(super) async fn stop_after_failed_stream(child: ChildProc, e: PipelineError) -> anyhow::Error {
    let stopped = child.terminate().await;
    match (e, stopped) {
        (e @ PipelineError::Storage(_), _) => e.into(),
        (_, Err(tool)) => tool.into(),
        (e, Ok(_)) => e.into(),
    }
}

/// Aborts a failed upload; a failure to abort is only logged, the target has failed anyway.
pub(super) async fn abort_upload(upload: &mut dyn Upload, key: &str) {
    if let Err(abort) = upload.abort().await {
        tracing::warn!(key = %key, error = %abort, "could not abort the upload; the bucket's lifecycle rule will remove its parts");
    }
}

/// What a target's dump produced, for its manifest.
pub(super) struct Produced {
    pub(super) stats: StreamStats,
    pub(super) source: SourceInfo,
    pub(super) globals: Option<GlobalsInfo>,
    /// PostgreSQL dumps: the archive's contents from its TOC.
    pub(super) contents: Option<crate::source::pg_toc::Contents>,
}

pub(super) async fn produce(
    job: &Job,
    t: &Target,
    upload: &mut dyn Upload,
) -> anyhow::Result<Produced> {
    match t.kind {
        Kind::Postgres if t.globals => {
            let (s, tools) = job.pg.as_ref().expect("postgres target implies settings");
            let (stats, source, globals) = dump_globals(job, s, tools, upload).await?;
            Ok(Produced {
                stats,
                source,
                globals: Some(globals),
                contents: None,
            })
        }
        Kind::Postgres => {
            let (s, tools) = job.pg.as_ref().expect("postgres target implies settings");
            let (stats, source, contents) =
                dump_postgres(job, s, tools, &t.database, upload).await?;
            Ok(Produced {
                stats,
                source,
                globals: None,
                contents,
            })
        }
        Kind::Mongo => {
            let (s, tools) = job.mongo.as_ref().expect("mongo target implies settings");
            let (stats, source) = dump_mongo(job, s, tools, &t.database, upload).await?;
            Ok(Produced {
                stats,
                source,
                globals: None,
                contents: None,
            })
        }
    }
}
