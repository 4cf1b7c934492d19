//! `backhaul prune` (and `backup --prune`): applies the GFS policy of [`crate::retention`] per
//! series — one (stage, kind, database) — in the store's time zone, and deletes artifacts
//! together with their manifests in one batched request.
//!
//! A run's cluster globals artifact is not a series of its own: it is kept while any database
//! backup of its run is kept and deleted with the last of them, never alone (a run whose
//! database dumps all failed keeps its globals; delete those by hand).
//!
//! Legacy objects (no manifest) count as good backups: they are the old script's real dumps.
//! Only a recorded failed verification makes an artifact "not ok".

use std::collections::BTreeMap;
use std::sync::Arc;

use super::common::{self, Store};
use super::restore::filter;
use crate::catalog::{self, Entry, Filter};
use crate::cli::{KeepArgs, PruneArgs};
use crate::config::{non_empty, ConfigError};
use crate::layout::Kind;
use crate::retention::{self, Item, Policy};
use crate::storage::{Incomplete, Storage};

pub fn policy(k: &KeepArgs) -> Result<Policy, ConfigError> {
    let p = Policy {
        keep_last: k.keep_last,
        keep_hourly: k.keep_hourly,
        keep_daily: k.keep_daily,
        keep_weekly: k.keep_weekly,
        keep_monthly: k.keep_monthly,
        keep_yearly: k.keep_yearly,
    };
    if p.is_empty() {
        return Err(ConfigError::invalid(
            "--keep-*",
            format!("not given: {}", retention::RetentionError::NoKeepRule),
        ));
    }
    Ok(p)
}

#[derive(Debug, Default)]
pub struct Pruned {
    pub kept: usize,
    pub deleted: usize,
    /// Would have been deleted, but the artifact or its manifest is under Object Lock.
    pub locked: usize,
}

/// Why `e` cannot be deleted yet: its artifact or its manifest is retained or on legal hold.
/// Both are checked before either is deleted, so a pair is only ever deleted whole. A lock
/// state that cannot be read counts as locked: deleting blind could split a pair.
async fn lock_of(storage: &Arc<dyn Storage>, e: &Entry) -> Option<String> {
    let now = chrono::Utc::now();
    let mut keys = vec![e.key.clone()];
    if e.manifest.is_some() {
        keys.push(e.manifest_key());
    }
    let mut why = Vec::new();
    for k in keys {
        let which = if k == e.key { "artifact" } else { "manifest" };
        match storage.lock(&k).await {
            Ok(Some(l)) => {
                if let Some(d) = l.describe(now) {
                    why.push(format!("{which} {d}"));
                }
            }
            Ok(None) => {}
            Err(err) => why.push(format!("{which} lock state unknown: {err}")),
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Decides per series, prints one `keep|delete <key> (<reasons>)` line per artifact and,
/// unless `dry_run`, deletes the others with their manifests.
pub async fn apply(
    storage: &Arc<dyn Storage>,
    store: &Store,
    policy: &Policy,
    filter: &Filter,
    dry_run: bool,
) -> anyhow::Result<Pruned> {
    let entries = catalog::load(
        storage,
        &store.dest.key_prefix(),
        &store.stage,
        &store.zone,
        filter,
    )
    .await?;
    let tz = store.zone.bucket_zone();
    let mut series: BTreeMap<(String, Kind, String), Vec<&Entry>> = BTreeMap::new();
    for e in entries.iter().filter(|e| !e.parsed.globals) {
        series
            .entry((
                e.parsed.stage.clone(),
                e.parsed.kind,
                e.parsed.database.clone(),
            ))
            .or_default()
            .push(e);
    }
    let mut out = Pruned::default();
    let mut doomed = Vec::new();
    let mut lines = String::new();
    for members in series.values() {
        let items: Vec<Item<usize>> = members
            .iter()
            .enumerate()
            .map(|(i, e)| Item {
                id: i,
                time: e.parsed.time,
                ok: e.verified() != Some(false),
            })
            .collect();
        for d in retention::apply(&items, policy, &tz)? {
            let e = members[d.id];
            if d.keep {
                out.kept += 1;
                lines.push_str(&format!("keep {} ({})\n", e.key, d.reasons.join(", ")));
            } else {
                let why = if e.verified() == Some(false) {
                    "failed verification, older than the newest good backup"
                } else {
                    "no keep rule matched"
                };
                if let Some(lock) = lock_of(storage, e).await {
                    out.locked += 1;
                    lines.push_str(&format!("locked {} ({why}; kept: {lock})\n", e.key));
                    continue;
                }
                out.deleted += 1;
                lines.push_str(&format!("delete {} ({why})\n", e.key));
                doomed.push(e.key.clone());
                if e.manifest.is_some() {
                    doomed.push(e.manifest_key());
                }
            }
        }
    }
    let run = |e: &Entry| (e.parsed.stage.clone(), e.parsed.timestamp.clone());
    let runs: std::collections::HashSet<_> = entries
        .iter()
        .filter(|e| e.parsed.kind == Kind::Postgres && !e.parsed.globals)
        .map(run)
        .collect();
    let gone: std::collections::HashSet<String> = doomed.iter().cloned().collect();
    let kept_runs: std::collections::HashSet<_> = entries
        .iter()
        .filter(|e| e.parsed.kind == Kind::Postgres && !e.parsed.globals && !gone.contains(&e.key))
        .map(run)
        .collect();
    for g in entries.iter().filter(|e| e.parsed.globals) {
        let r = run(g);
        if kept_runs.contains(&r) || !runs.contains(&r) {
            out.kept += 1;
            let why = if runs.contains(&r) {
                "globals of a kept run"
            } else {
                "globals of a run without database backups"
            };
            lines.push_str(&format!("keep {} ({why})\n", g.key));
        } else {
            out.deleted += 1;
            lines.push_str(&format!("delete {} (globals of a deleted run)\n", g.key));
            doomed.push(g.key.clone());
            if g.manifest.is_some() {
                doomed.push(g.manifest_key());
            }
        }
    }
    print!("{lines}");
    tracing::info!(policy = %policy, kept = out.kept, deleted = out.deleted, locked = out.locked, dry_run, "prune");
    if !dry_run && !doomed.is_empty() {
        storage.delete(&doomed).await?;
    }
    Ok(out)
}

/// Aborts the stage's writes that never finished and began before `older_than` ago; prints
/// one `abort <key> (...)` line each. Recent ones may be a backup still running: left alone.
pub async fn abort_incomplete(
    storage: &Arc<dyn Storage>,
    store: &Store,
    older_than: std::time::Duration,
    dry_run: bool,
) -> anyhow::Result<Vec<Incomplete>> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(older_than)?;
    let old: Vec<Incomplete> = storage
        .incomplete(&store.stage_prefix())
        .await?
        .into_iter()
        .filter(|u| u.initiated.is_some_and(|t| t < cutoff))
        .collect();
    for u in &old {
        println!(
            "abort {} (incomplete upload {}, initiated {}, {} bytes)",
            u.key,
            u.id,
            u.initiated.map(|t| t.to_rfc3339()).unwrap_or_default(),
            u.bytes.map(|b| b.to_string()).unwrap_or_else(|| "?".into())
        );
        if !dry_run {
            storage.abort_incomplete(u).await?;
        }
    }
    tracing::info!(aborted = old.len(), dry_run, "incomplete uploads");
    Ok(old)
}

pub async fn run(args: PruneArgs) -> anyhow::Result<()> {
    let store = Store::resolve(&args.store)?;
    let filter = filter(args.kind.as_deref(), args.database.clone())?;
    let abort_older = non_empty(args.abort_incomplete_older_than.clone())
        .map(|d| common::parse_duration(&d, "--abort-incomplete-older-than"))
        .transpose()?;
    let policy = match (policy(&args.keep), abort_older) {
        (Ok(p), _) => Some(p),
        (Err(_), Some(_)) => None,
        (Err(e), None) => return Err(e.into()),
    };
    let storage = store.open_existing().await?;
    if let Some(policy) = policy {
        apply(&storage, &store, &policy, &filter, args.dry_run).await?;
    }
    if let Some(d) = abort_older {
        abort_incomplete(&storage, &store, d, args.dry_run).await?;
    }
    Ok(())
}
