//! The dump tools, each producing one artifact's bytes: pg_dump, pg_dumpall --globals-only,
//! mongodump (a zipped tree or a streamed archive).

use super::*;

/// `pg_dumpall --globals-only` into the upload. The script is small (roles, not data), so it
/// is read whole first: a permission failure on pg_authid (managed services) is then retried
/// with `--no-role-passwords` before anything is uploaded.
pub(super) async fn dump_globals(
    job: &Job,
    s: &PgSettings,
    tools: &PgTools,
    upload: &mut dyn Upload,
) -> anyhow::Result<(StreamStats, SourceInfo, GlobalsInfo)> {
    let db = s
        .conn
        .databases
        .first()
        .cloned()
        .unwrap_or_else(|| "postgres".into());
    let server = pg::server_version(tools, &s.conn, &db, &job.redactor)
        .await
        .context("connecting to PostgreSQL")?;
    tools.check_server(&server)?;
    let (script, role_passwords) = match read_globals(job, s, tools, &db, true).await {
        Ok(script) => (script, true),
        Err(e) if format!("{e:#}").contains("pg_authid") => {
            tracing::warn!(error = %without_query(&job.redactor.redact(&format!("{e:#}"))), "the server does not let this role read password hashes: saving the roles without passwords (--no-role-passwords)");
            (read_globals(job, s, tools, &db, false).await?, false)
        }
        Err(e) => return Err(e),
    };
    let codec = match s.compression {
        PgCompression::Zstd => Codec::Zstd {
            level: s.level,
            threads: 1,
        },
        PgCompression::Pg | PgCompression::None => Codec::Identity,
    };
    let producer = job.seal(Box::new(move |sink| {
        write_path::copy_encoded(std::io::Cursor::new(script), sink, codec)
    }));
    let stats =
        write_path::stream(job.storage.clone(), upload, producer, Progress::hidden()).await?;
    Ok((
        stats,
        pg_source("pg_dumpall", tools, s, server.text),
        GlobalsInfo { role_passwords },
    ))
}

/// A pg_dumpall error without the query it quotes ("Query was: SELECT …", hundreds of
/// bytes of catalog SQL): the reason is what a reader of the warning needs.
pub(super) fn without_query(msg: &str) -> String {
    const SEPARATORS: [char; 6] = [' ', ':', ';', ',', '|', '\n'];
    let Some(cut) = msg.to_ascii_lowercase().find("query was:") else {
        return msg.to_string();
    };
    let mut head = msg[..cut].trim_end_matches(SEPARATORS);
    // The line label before "Query was:" (PostgreSQL 15 says detail, older ones error).
    for label in ["pg_dumpall: detail", "pg_dumpall: error"] {
        head = head.strip_suffix(label).unwrap_or(head);
    }
    head.trim_end_matches(SEPARATORS).to_string()
}

pub(super) async fn read_globals(
    job: &Job,
    s: &PgSettings,
    tools: &PgTools,
    db: &str,
    role_passwords: bool,
) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut child =
        pg::spawn_globals_dump(tools, &s.conn, db, role_passwords, job.redactor.clone())?;
    let mut out = child.take_stdout().context("pg_dumpall has no stdout")?;
    let read = tokio::task::spawn_blocking(move || {
        let mut b = Vec::new();
        out.read_to_end(&mut b).map(|_| b)
    });
    let script = read.await.context("reading pg_dumpall's output")?;
    child.wait().await?;
    script.context("reading pg_dumpall's output")
}

pub(super) async fn dump_postgres(
    job: &Job,
    s: &PgSettings,
    tools: &PgTools,
    db: &str,
    upload: &mut dyn Upload,
) -> anyhow::Result<(
    StreamStats,
    SourceInfo,
    Option<crate::source::pg_toc::Contents>,
)> {
    let server = pg::server_version(tools, &s.conn, db, &job.redactor)
        .await
        .context("connecting to PostgreSQL")?;
    tools.check_server(&server)?;
    let mut child = pg::spawn_dump(
        tools,
        &s.conn,
        db,
        s.compression,
        &s.extra_args,
        job.redactor.clone(),
    )?;
    let stdout = child.take_stdout().context("pg_dump has no stdout")?;
    // The manifest's summary of the archive comes from a copy of the stream's head.
    let (tap, side) = match contents::TocTap::start(tools, job.redactor.clone()) {
        Ok((tap, side)) => (Some(tap), Some(side)),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the archive's table of contents: the manifest will have no contents summary");
            (None, None)
        }
    };
    let stdout = contents::HeadTee::new(stdout, side);
    let codec = match s.compression {
        PgCompression::Zstd => Codec::Zstd {
            level: s.level,
            threads: s.threads,
        },
        PgCompression::Pg | PgCompression::None => Codec::Identity,
    };
    let producer = job.seal(Box::new(move |sink| {
        write_path::copy_encoded(stdout, sink, codec)
    }));
    let progress = Progress::for_terminal(format!("postgres {db}"));
    let streamed =
        write_path::stream(job.storage.clone(), upload, producer, progress.clone()).await;
    progress.done();
    let stats = match streamed {
        Ok(stats) => {
            child.wait().await?;
            stats
        }
        Err(e) => return Err(stop_after_failed_stream(child, e).await),
    };
    let contents = match tap {
        Some(tap) => match tap.finish(tools).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(database = %db, error = %job.redactor.redact(&format!("{e:#}")), "could not summarise the archive's contents for the manifest");
                None
            }
        },
        None => None,
    };
    Ok((stats, pg_source("pg_dump", tools, s, server.text), contents))
}

pub(super) async fn dump_mongo(
    job: &Job,
    s: &MongoSettings,
    tools: &MongoTools,
    db: &str,
    upload: &mut dyn Upload,
) -> anyhow::Result<(StreamStats, SourceInfo)> {
    let (stats, counts) = match s.format {
        MongoFormat::Zip => dump_mongo_zip(job, s, tools, db, upload).await?,
        MongoFormat::Archive => dump_mongo_archive(job, s, tools, db, upload).await?,
    };
    for (ns, n) in &counts {
        tracing::info!(artifact = %db, collection = %ns, documents = n, "dumped");
    }
    Ok((
        stats,
        SourceInfo {
            dump_tool: "mongodump".into(),
            dump_tool_version: tools.version.clone(),
            server_version: None,
            host: s.conn.host(),
            neon_endpoint: None,
            collections: Some(counts),
        },
    ))
}

/// mongodump into a private temp dir, then zip it into the upload. The dir is owned by this
/// future, so it is removed on success, failure and cancellation alike.
pub(super) async fn dump_mongo_zip(
    job: &Job,
    s: &MongoSettings,
    tools: &MongoTools,
    db: &str,
    upload: &mut dyn Upload,
) -> anyhow::Result<(StreamStats, BTreeMap<String, u64>)> {
    mongo::check_free_space(&s.work_dir, s.min_free_mib)?;
    let dir = mongo::dump_to_dir(
        tools,
        &s.conn,
        s.conn.dump_database(db),
        &s.extra_args,
        &s.work_dir,
        job.redactor.clone(),
    )
    .await?;
    let root = dir.path().to_path_buf();
    let counts = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || mongo::count_documents(&root))
            .await
            .context("count task panicked")??
    };
    check_not_empty(s, db, &counts)?;
    let producer = job.seal(Box::new(move |sink| mongo::zip_tree(&root, sink)));
    let progress = Progress::for_terminal(format!("mongo {db}"));
    let streamed =
        write_path::stream(job.storage.clone(), upload, producer, progress.clone()).await;
    progress.done();
    drop(dir);
    Ok((streamed?, counts))
}

/// Real mongodump exits 0 and writes nothing for a database that does not exist.
pub(super) fn check_not_empty(
    s: &MongoSettings,
    db: &str,
    counts: &BTreeMap<String, u64>,
) -> Result<(), mongo::MongoError> {
    if counts.is_empty() && !s.allow_empty {
        let what = match s.conn.dump_database(db) {
            Some(d) => format!("database {d}"),
            None => "the databases the URI selects".to_string(),
        };
        return Err(mongo::MongoError::Empty(what));
    }
    Ok(())
}

/// `mongodump --archive --gzip` streamed straight into the upload, as pg_dump is.
pub(super) async fn dump_mongo_archive(
    job: &Job,
    s: &MongoSettings,
    tools: &MongoTools,
    db: &str,
    upload: &mut dyn Upload,
) -> anyhow::Result<(StreamStats, BTreeMap<String, u64>)> {
    let mongo::ArchiveDump { mut child } = mongo::spawn_archive(
        tools,
        &s.conn,
        s.conn.dump_database(db),
        &s.extra_args,
        job.redactor.clone(),
    )?;
    let stdout = child.take_stdout().context("mongodump has no stdout")?;
    let counter = mongo::ArchiveCounter::start();
    let teed = counter.tee(stdout);
    let producer = job.seal(Box::new(move |sink| {
        write_path::copy_encoded(teed, sink, Codec::Identity)
    }));
    let progress = Progress::for_terminal(format!("mongo {db}"));
    let streamed =
        write_path::stream(job.storage.clone(), upload, producer, progress.clone()).await;
    progress.done();
    let result = match streamed {
        Ok(stats) => child.wait().await.map(|_| stats).map_err(Into::into),
        Err(e) => Err(stop_after_failed_stream(child, e).await),
    };
    let stats = result?;
    // A stream that is not a whole archive, or an empty one (still a valid archive), fails
    // here, before the upload completes.
    let counts = tokio::task::spawn_blocking(move || counter.finish())
        .await
        .context("count task panicked")??;
    check_not_empty(s, db, &counts)?;
    Ok((stats, counts))
}

/// What a PostgreSQL artifact's manifest says about where it came from (no credentials).
pub(super) fn pg_source(
    dump_tool: &str,
    tools: &PgTools,
    s: &PgSettings,
    server_version: String,
) -> SourceInfo {
    SourceInfo {
        dump_tool: dump_tool.into(),
        dump_tool_version: tools.version.clone(),
        server_version: Some(server_version),
        host: s.conn.host.clone(),
        neon_endpoint: s.conn.neon_endpoint(),
        collections: None,
    }
}

#[cfg(test)]
mod tests {
    use super::without_query;

    #[test]
    fn warnings_carry_the_reason_not_the_sql() {
        let e = "pg_dumpall failed: exited with exit status: 1: pg_dumpall: error: query failed: ERROR:  permission denied for table pg_authid; pg_dumpall: detail: Query was: SELECT oid, rolname, rolsuper, rolinherit FROM pg_authid WHERE rolname !~ '^pg_' ORDER BY 2";
        assert_eq!(
            without_query(e),
            "pg_dumpall failed: exited with exit status: 1: pg_dumpall: error: query failed: ERROR:  permission denied for table pg_authid"
        );
        assert_eq!(without_query("boom"), "boom");
        // PostgreSQL 14 and older label the query line "error".
        assert_eq!(
            without_query("pg_dumpall: error: query failed: ERROR:  permission denied for table pg_authid; pg_dumpall: error: query was: SELECT 1"),
            "pg_dumpall: error: query failed: ERROR:  permission denied for table pg_authid"
        );
    }
}
