//! `backhaul prune` (and `backup --prune`): applies the GFS policy of [`crate::retention`] per
//! series — one (stage, kind, database) — in the store's time zone, and deletes artifacts
//! together with their manifests in one batched request.
//!
//! A run's cluster globals artifact is not a series of its own: it is kept while any database
//! backup of its run is kept and deleted with the last of them, never alone (a run whose
//! database dumps all failed keeps its globals; delete those by hand).
//!
//! What cannot be checked is never trusted, and never lost by mistake:
//! - An object without a manifest (the old script's dumps, or a backup whose manifest is gone)
//!   satisfies the keep rules but is never the "newest successful" backup that is always
//!   kept; one younger than the grace period (`--grace`) is left alone entirely, as a backup
//!   may be about to write its manifest.
//! - A manifest that cannot be read keeps every backup of its database (and says so), until
//!   someone looks at it.
//! - A manifest whose object is gone (a lost backup) is a failed item: removed once older than
//!   the newest good backup. So are the globals of a run that has no database backup.
//! - A recorded failed verification makes an artifact "not ok".

use std::collections::BTreeMap;
use std::sync::Arc;

use super::common::{self, Store};
use crate::catalog::{self, Entry, Filter, Problem};
use crate::cli::{KeepArgs, PruneArgs};
use crate::commands::common::filter;
use crate::config::{non_empty, ConfigError};
use crate::layout::{self, Kind};
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

/// The keep policy and the grace period of objects that have no manifest yet.
#[derive(Debug, Clone)]
pub struct Rules {
    pub policy: Policy,
    pub grace: std::time::Duration,
}

pub fn grace(k: &KeepArgs) -> Result<std::time::Duration, ConfigError> {
    common::parse_duration(&k.grace, "--grace")
}

pub fn rules(k: &KeepArgs) -> Result<Rules, ConfigError> {
    Ok(Rules {
        grace: grace(k)?,
        policy: policy(k)?,
    })
}

#[derive(Debug, Default)]
pub struct Pruned {
    pub kept: usize,
    pub deleted: usize,
    /// Would have been deleted, but the artifact or its manifest is under Object Lock.
    pub locked: usize,
}

/// The keys deleting `e` removes: its manifest and its object, whichever exist, first; then,
/// for a directory dump, every object its manifest lists and anything else under its folder
/// (objects of a run that died while completing, a file the manifest could not name).
async fn keys_of(storage: &Arc<dyn Storage>, e: &Entry) -> Result<Vec<String>, String> {
    let mut keys = match &e.problem {
        Some(Problem::ObjectMissing) => vec![e.manifest_key()],
        Some(Problem::ManifestUnreadable(_)) => vec![e.manifest_key(), e.key.clone()],
        None if e.manifest.is_some() => vec![e.manifest_key(), e.key.clone()],
        None => vec![e.key.clone()],
    };
    if let Some(folder) = crate::layout::dir_folder(&e.key).filter(|_| e.parsed.directory) {
        if let Some(d) = e.manifest.as_ref().and_then(|m| m.directory.as_ref()) {
            keys.extend(d.objects.iter().map(|o| o.key.clone()));
        }
        let listed = storage
            .list(folder)
            .await
            .map_err(|err| format!("objects under {folder} unknown: {err}"))?;
        keys.extend(listed.into_iter().map(|o| o.key));
        let mut seen = std::collections::HashSet::new();
        keys.retain(|k| seen.insert(k.clone()));
    }
    Ok(keys)
}

/// Why `e` cannot be deleted yet: one of its objects (artifact, manifest, a directory dump's
/// files) is retained or on legal hold. All are checked before any is deleted, so a backup is
/// only ever deleted whole. A lock state that cannot be read counts as locked: deleting blind
/// could split a backup.
async fn lock_of(storage: &Arc<dyn Storage>, e: &Entry, keys: &[String]) -> Option<String> {
    let now = chrono::Utc::now();
    let mut why = Vec::new();
    let manifest = e.manifest_key();
    for k in keys {
        let which = if *k == e.key {
            "artifact".to_string()
        } else if *k == manifest {
            "manifest".to_string()
        } else {
            format!("object {k}")
        };
        match storage.lock(k).await {
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

/// Whether `e` was written less than `grace` ago, by its key's timestamp or its object's
/// modification time, whichever is later (a clock on either side may be off).
fn young(e: &Entry, cutoff: chrono::DateTime<chrono::Utc>) -> bool {
    e.parsed.time > cutoff || e.last_modified.is_some_and(|t| t > cutoff)
}

/// Collects a plan: one line per decision, the keys to delete.
#[derive(Default)]
struct Plan {
    out: Pruned,
    lines: String,
    doomed: Vec<String>,
}

impl Plan {
    fn keep(&mut self, key: &str, why: &str) {
        self.out.kept += 1;
        self.lines.push_str(&format!("keep {key} ({why})\n"));
    }

    async fn delete(&mut self, storage: &Arc<dyn Storage>, e: &Entry, why: &str) -> bool {
        let shown = match e.problem {
            Some(Problem::ObjectMissing) => e.manifest_key(),
            _ => e.key.clone(),
        };
        let keys = match keys_of(storage, e).await {
            Ok(keys) => keys,
            Err(unknown) => {
                self.out.locked += 1;
                self.lines
                    .push_str(&format!("locked {shown} ({why}; kept: {unknown})\n"));
                return false;
            }
        };
        if let Some(lock) = lock_of(storage, e, &keys).await {
            self.out.locked += 1;
            self.lines
                .push_str(&format!("locked {shown} ({why}; kept: {lock})\n"));
            return false;
        }
        self.out.deleted += 1;
        self.lines.push_str(&format!("delete {shown} ({why})\n"));
        self.doomed.extend(keys);
        true
    }
}

/// Decides per series, prints one `keep|delete|locked <key> (<reasons>)` line per artifact
/// and, unless `dry_run`, deletes the others with their manifests.
pub async fn apply(
    storage: &Arc<dyn Storage>,
    store: &Store,
    rules: &Rules,
    filter: &Filter,
    dry_run: bool,
) -> anyhow::Result<Pruned> {
    let policy = &rules.policy;
    let entries = catalog::load(
        storage,
        &store.dest.key_prefix(),
        &store.stage,
        &store.zone,
        filter,
    )
    .await?;
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(rules.grace)?;
    let grace = humantime::format_duration(rules.grace);
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
    let mut plan = Plan::default();
    // The newest good, checkable PostgreSQL database backup kept: runs older than it that
    // have only globals are done with.
    let mut newest_good_pg: Option<chrono::DateTime<chrono::FixedOffset>> = None;
    let mut gone = std::collections::HashSet::new();
    for ((_, kind, database), members) in &series {
        let unreadable: Vec<&&Entry> = members
            .iter()
            .filter(|e| matches!(e.problem, Some(Problem::ManifestUnreadable(_))))
            .collect();
        if let Some(first) = unreadable.first() {
            for e in members {
                let why = match &e.problem {
                    Some(p @ Problem::ManifestUnreadable(_)) => format!("{p}; every backup of {database} is kept until it is fixed or removed"),
                    _ => format!("{database} has an unreadable manifest ({}): every backup of it is kept until that is fixed or removed", first.manifest_key()),
                };
                plan.keep(&e.key, &why);
            }
            tracing::warn!(database = %database, manifest = %first.manifest_key(), "unreadable manifest: keeping every backup of this database");
            continue;
        }
        let mut judged = Vec::new();
        for e in members {
            if e.manifest.is_none() && e.problem.is_none() && young(e, cutoff) {
                plan.keep(&e.key, &format!("no manifest, younger than the grace period ({grace}): a backup may still be writing it"));
            } else {
                judged.push(*e);
            }
        }
        let items: Vec<Item<usize>> = judged
            .iter()
            .enumerate()
            .map(|(i, e)| Item {
                id: i,
                time: e.parsed.time,
                ok: e.problem.is_none() && e.verified() != Some(false),
                checked: e.checkable(),
            })
            .collect();
        for d in retention::apply(&items, policy, &tz)? {
            let e = judged[d.id];
            if d.keep {
                if e.problem == Some(Problem::ObjectMissing) {
                    plan.keep(
                        &e.manifest_key(),
                        &format!("orphan manifest: object missing; {}", d.reasons.join(", ")),
                    );
                    continue;
                }
                if *kind == Kind::Postgres && e.checkable() && e.verified() != Some(false) {
                    newest_good_pg = newest_good_pg.max(Some(e.parsed.time));
                }
                plan.keep(&e.key, &d.reasons.join(", "));
            } else {
                let why = match (&e.problem, e.verified()) {
                    (Some(Problem::ObjectMissing), _) => {
                        "orphan manifest: its object is missing; older than the newest good backup"
                    }
                    (_, Some(false)) => "failed verification, older than the newest good backup",
                    _ => "no keep rule matched",
                };
                if plan.delete(storage, e, why).await {
                    gone.insert(e.key.clone());
                }
            }
        }
    }
    let run = |e: &Entry| (e.parsed.stage.clone(), e.parsed.timestamp.clone());
    let databases = || {
        entries.iter().filter(|e| {
            e.parsed.kind == Kind::Postgres
                && !e.parsed.globals
                && e.problem != Some(Problem::ObjectMissing)
        })
    };
    let runs: std::collections::HashSet<_> = databases().map(run).collect();
    let kept_runs: std::collections::HashSet<_> = databases()
        .filter(|e| !gone.contains(&e.key))
        .map(run)
        .collect();
    for g in entries.iter().filter(|e| e.parsed.globals) {
        let r = run(g);
        if let Some(p @ Problem::ManifestUnreadable(_)) = &g.problem {
            plan.keep(&g.key, &format!("{p}"));
        } else if kept_runs.contains(&r) {
            plan.keep(&g.key, "globals of a kept run");
        } else if runs.contains(&r) {
            plan.delete(storage, g, "globals of a deleted run").await;
        } else if young(g, cutoff) {
            plan.keep(&g.key, &format!("globals of a run without database backups, younger than the grace period ({grace})"));
        } else if newest_good_pg.is_some_and(|t| g.parsed.time < t) {
            plan.delete(
                storage,
                g,
                "globals of a run without a database backup, older than the newest good backup",
            )
            .await;
        } else {
            plan.keep(
                &g.key,
                "globals of a run without database backups, newer than the newest good backup",
            );
        }
    }
    let Plan { out, lines, doomed } = plan;
    print!("{lines}");
    tracing::info!(policy = %policy, kept = out.kept, deleted = out.deleted, locked = out.locked, dry_run, "prune");
    if !dry_run && !doomed.is_empty() {
        storage.delete(&doomed).await?;
    }
    Ok(out)
}

/// Aborts the stage's writes that never finished and began before `older_than` ago; prints
/// one `abort <key> (...)` line each. Recent ones may be a backup still running: left alone.
/// "Began" must hold by both clocks: the server's `Initiated` (which an S3-compatible server
/// may report wrongly) and the timestamp in the key, which the backup took from its own clock
/// when it started. A key that carries no timestamp of ours is not ours to abort.
pub async fn abort_incomplete(
    storage: &Arc<dyn Storage>,
    store: &Store,
    older_than: std::time::Duration,
    dry_run: bool,
) -> anyhow::Result<Vec<Incomplete>> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(older_than)?;
    let prefix = store.dest.key_prefix();
    let mut old = Vec::new();
    for u in storage.incomplete(&store.stage_prefix()).await? {
        // A manifest, a directory dump's data file or a foreign name: its run's folder still
        // says when the run began.
        let started = layout::run_time(&prefix, &u.key, &store.zone);
        let by_server = u.initiated.is_some_and(|t| t < cutoff);
        let by_key = started.is_some_and(|t| t < cutoff);
        if by_server && by_key {
            old.push(u);
        } else if by_server {
            println!(
                "skip {} (incomplete upload {}: the server says initiated {}, but {})",
                u.key,
                u.id,
                u.initiated.map(|t| t.to_rfc3339()).unwrap_or_default(),
                match started {
                    Some(t) => format!("its key says the run began at {}", t.to_rfc3339()),
                    None => "its key carries no backup timestamp".to_string(),
                }
            );
        }
    }
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
    let orphans = orphan_dir_files(storage, store, cutoff).await?;
    for o in &orphans {
        println!(
            "delete {} (file of a parallel backup that never completed, written {})",
            o.key,
            o.last_modified.map(|t| t.to_rfc3339()).unwrap_or_default()
        );
    }
    if !dry_run && !orphans.is_empty() {
        let keys: Vec<String> = orphans.iter().map(|o| o.key.clone()).collect();
        storage.delete(&keys).await?;
    }
    tracing::info!(
        deleted = orphans.len(),
        dry_run,
        "files of unfinished parallel backups"
    );
    Ok(old)
}

/// Objects a parallel (`--jobs`) backup completed before it was killed: under a `.pgdir/`
/// folder that holds neither an entry (TOC) nor its manifest, and older than `cutoff` by both
/// clocks (the run's folder timestamp and the object's own), so a running backup's files are
/// never taken. A folder with an entry or a manifest belongs to a backup: `prune` deletes it
/// whole with that backup.
async fn orphan_dir_files(
    storage: &Arc<dyn Storage>,
    store: &Store,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Vec<crate::storage::ObjectInfo>> {
    let prefix = store.dest.key_prefix();
    let folder_of = |key: &str| {
        key.find(&format!("{}/", layout::DIR_SUFFIX))
            .map(|i| key[..i + layout::DIR_SUFFIX.len() + 1].to_string())
    };
    let objects = storage.list(&store.stage_prefix()).await?;
    let owned: std::collections::HashSet<String> = objects
        .iter()
        .filter_map(|o| {
            let key = o
                .key
                .strip_suffix(layout::MANIFEST_SUFFIX)
                .unwrap_or(&o.key);
            layout::parse_key(&prefix, key, &store.zone)
                .filter(|p| p.directory)
                .and_then(|_| layout::dir_folder(key).map(str::to_string))
        })
        .collect();
    Ok(objects
        .into_iter()
        .filter(|o| {
            folder_of(&o.key).is_some_and(|f| !owned.contains(&f))
                && layout::run_time(&prefix, &o.key, &store.zone).is_some_and(|t| t < cutoff)
                && o.last_modified.is_some_and(|t| t < cutoff)
        })
        .collect())
}

pub async fn run(args: PruneArgs) -> anyhow::Result<()> {
    let store = Store::resolve(&args.store)?;
    let filter = filter(args.kind.as_deref(), args.database.clone())?;
    let abort_older = non_empty(args.abort_incomplete_older_than.clone())
        .map(|d| common::parse_duration(&d, "--abort-incomplete-older-than"))
        .transpose()?;
    let grace = grace(&args.keep)?;
    let policy = match (policy(&args.keep), abort_older) {
        (Ok(p), _) => Some(Rules { policy: p, grace }),
        (Err(_), Some(_)) => None,
        (Err(e), None) => return Err(e.into()),
    };
    let storage = store.open_existing().await?;
    if let Some(rules) = policy {
        apply(&storage, &store, &rules, &filter, args.dry_run).await?;
    }
    if let Some(d) = abort_older {
        abort_incomplete(&storage, &store, d, args.dry_run).await?;
    }
    Ok(())
}
