//! `backhaul list`: the stage's backups, newest first, as a table or JSON lines.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;

use super::common::Store;
use crate::backup_ref;
use crate::catalog::{self, Entry, Problem};
use crate::cli::ListArgs;
use crate::commands::common::filter;
use crate::config::{non_empty, ConfigError};
use crate::storage::Storage;

/// HEAD requests in flight for `--locks`.
const LOCK_LOOKUPS: usize = 8;

/// One listing row; the JSON form is the stable, scriptable one.
#[derive(Debug, Serialize)]
struct Row<'a> {
    /// The short id `restore`, `verify` and `list` accept (see [`crate::backup_ref`]).
    id: &'a str,
    key: &'a str,
    timestamp: &'a str,
    time: String,
    kind: &'static str,
    database: &'a str,
    /// Bytes stored: for a parallel (directory) dump, all its objects.
    size: u64,
    /// A parallel (directory) dump: how many objects it is stored as, its TOC's included.
    #[serde(skip_serializing_if = "Option::is_none")]
    objects: Option<usize>,
    compression: Option<&'a str>,
    sha256: Option<&'a str>,
    /// yes / no / failed, "no manifest" for objects written by the old script, "object
    /// missing" for a manifest whose object is gone, "manifest unreadable".
    verified: &'static str,
    manifest: bool,
    /// What is wrong with this entry (`object missing`, `manifest unreadable: <why>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
    /// With `--locks`: `GOVERNANCE until <time>`, `legal hold`, `none`; omitted otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    lock: Option<String>,
}

fn row<'a>(e: &'a Entry, id: &'a str, lock: Option<&str>) -> Row<'a> {
    let m = e.manifest.as_ref();
    Row {
        id,
        key: &e.key,
        timestamp: &e.parsed.timestamp,
        time: e.parsed.time.to_rfc3339(),
        kind: e.parsed.kind.as_str(),
        database: &e.parsed.database,
        size: m
            .and_then(|m| m.directory.as_ref())
            .map_or(e.size, |d| d.stored_bytes),
        objects: m
            .and_then(|m| m.directory.as_ref())
            .map(|d| d.objects.len() + 1),
        compression: m.map(|m| m.compression.as_str()),
        sha256: m.map(|m| m.sha256.as_str()),
        verified: match (m.is_some(), e.verified(), &e.problem) {
            (_, _, Some(Problem::ObjectMissing)) => "object missing",
            (_, _, Some(Problem::ManifestUnreadable(_))) => "manifest unreadable",
            (false, _, None) => "no manifest",
            (true, None, None) => "no",
            (true, Some(true), None) => "yes",
            (true, Some(false), None) => "failed",
        },
        manifest: m.is_some(),
        problem: e.problem.as_ref().map(ToString::to_string),
        lock: lock.map(str::to_string),
    }
}

/// `--database X` matching nothing is a typo more often than an empty history: name the
/// databases that do have backups (of `--kind`, when given) in the stage.
async fn no_such_database(
    storage: &Arc<dyn Storage>,
    store: &Store,
    filter: &catalog::Filter,
    db: &str,
) -> anyhow::Result<ConfigError> {
    let all = catalog::load(
        storage,
        &store.dest.key_prefix(),
        &store.stage,
        &store.zone,
        &catalog::Filter {
            database: None,
            ..filter.clone()
        },
    )
    .await?;
    let names: BTreeSet<&str> = all
        .iter()
        .filter(|e| !e.parsed.globals)
        .map(|e| e.parsed.database.as_str())
        .collect();
    let known = if names.is_empty() {
        "none".to_string()
    } else {
        names.into_iter().collect::<Vec<_>>().join(", ")
    };
    Ok(ConfigError::invalid(
        "--database",
        format!(
            "{}: no backups of it in stage {}; databases with backups: {known}",
            crate::config::quoted(db),
            store.stage
        ),
    ))
}

pub async fn run(args: ListArgs) -> anyhow::Result<()> {
    let store = Store::resolve(&args.store)?;
    let filter = filter(args.kind.as_deref(), args.database.clone())?;
    let storage = store.open_existing().await?;
    let entries = catalog::load(
        &storage,
        &store.dest.key_prefix(),
        &store.stage,
        &store.zone,
        &filter,
    )
    .await?;
    let entries = match non_empty(args.backup.clone()) {
        Some(b) => only(entries, &b, &filter, &store.stage)?,
        None => entries,
    };
    if entries.is_empty() {
        if let Some(db) = &filter.database {
            return Err(no_such_database(&storage, &store, &filter, db)
                .await?
                .into());
        }
    }
    let locks = if args.locks {
        Some(locks(&storage, &entries).await?)
    } else {
        None
    };
    let lock_of = |i: usize| locks.as_ref().map(|l| l[i].as_str());
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    let ids = backup_ref::shown(&keys);
    let mut out = String::new();
    if args.json {
        for (i, e) in entries.iter().enumerate() {
            out.push_str(&serde_json::to_string(&row(e, &ids[i], lock_of(i)))?);
            out.push('\n');
        }
    } else {
        out = table(&entries, &ids, locks.as_deref());
    }
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = stdout.write_all(out.as_bytes());
    Ok(())
}

/// `list <backup>`: the entries the reference names (several for a run's timestamp); one
/// that names nothing is an error, like `restore`'s.
fn only(
    entries: Vec<Entry>,
    reference: &str,
    filter: &catalog::Filter,
    stage: &str,
) -> anyhow::Result<Vec<Entry>> {
    let r = backup_ref::Reference::parse(reference);
    if let backup_ref::Reference::Other(_) = r {
        return Err(catalog::CatalogError::NotAnArtifact(reference.to_string()).into());
    }
    let keep: Vec<Entry> = backup_ref::matching(&entries, &r, filter)
        .into_iter()
        .cloned()
        .collect();
    if keep.is_empty() {
        return Err(catalog::CatalogError::NotFound(format!(
            "{reference} in stage {stage} ({})",
            filter.describe()
        ))
        .into());
    }
    Ok(keep)
}

/// Each entry's Object Lock, described (`none` when unlocked), in entry order.
async fn locks(storage: &Arc<dyn Storage>, entries: &[Entry]) -> anyhow::Result<Vec<String>> {
    let limit = Arc::new(Semaphore::new(LOCK_LOOKUPS));
    let mut set = tokio::task::JoinSet::new();
    for (i, e) in entries.iter().enumerate() {
        let (storage, limit, key) = (storage.clone(), limit.clone(), e.key.clone());
        set.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore open");
            (i, storage.lock(&key).await)
        });
    }
    let now = chrono::Utc::now();
    let mut out = vec![String::new(); entries.len()];
    while let Some(r) = set.join_next().await {
        let (i, lock) = r?;
        out[i] = lock?
            .and_then(|l| l.describe(now))
            .unwrap_or_else(|| "none".to_string());
    }
    Ok(out)
}

fn table(entries: &[Entry], ids: &[String], locks: Option<&[String]>) -> String {
    let mut header = vec![
        "ID",
        "TIMESTAMP",
        "KIND",
        "DATABASE",
        "SIZE",
        "COMPRESSION",
        "SHA256",
        "VERIFIED",
    ];
    if locks.is_some() {
        header.push("LOCK");
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let r = row(e, &ids[i], locks.map(|l| l[i].as_str()));
            let mut cells = vec![
                r.id.to_string(),
                r.timestamp.to_string(),
                r.kind.to_string(),
                r.database.to_string(),
                crate::output::size(r.size),
                r.compression.unwrap_or("-").to_string(),
                r.sha256
                    .map(|s| s.chars().take(12).collect())
                    .unwrap_or_else(|| "-".into()),
                r.problem.clone().unwrap_or_else(|| r.verified.to_string()),
            ];
            cells.extend(r.lock);
            cells
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(s.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in &rows {
        line(r);
    }
    out
}
