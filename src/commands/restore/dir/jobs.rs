//! `restore --jobs N` of a directory dump (`backup --jobs`), in the phases `pg_restore -j`
//! runs: the definitions (pre-data) in one transaction; the data by N pg_restores, each fed its
//! tables' blocks straight from their objects (no spool: every file is its own GET) in a
//! transaction that can only end once each of its files matched its own SHA-256 (see
//! [`crate::commands::restore::dir`]); each table's indexes and constraints as soon as its data committed;
//! the privileges last, serially. Post-data and privileges read the TOC alone, from a private
//! `head.dump`. Like `pg_restore -j` it is not one transaction: a failure midway leaves the
//! definitions and the batches that committed, all of them verified, and the error says which.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::commands::restore::dir::{DirBackup, FeedRun};
use crate::commands::restore::jobs::{run_phase, write_list};
use crate::commands::restore::PgTarget;
use crate::commands::Interrupted;
use crate::source::pg_archive;
use crate::source::postgres::{self as pg, RestoreOpts};
use crate::storage::Storage;

/// A block this big (raw bytes) gets a pg_restore of its own; smaller ones share one, up to
/// [`BATCH_BYTES`] or [`BATCH_ENTRIES`]: a database of many small tables must not start a
/// pg_restore per table.
const BIG: u64 = 4 << 20;
const BATCH_BYTES: u64 = 64 << 20;
const BATCH_ENTRIES: usize = 1000;

/// The data blocks in batches for the data pg_restores, largest first (as `pg_restore -j`
/// orders them; the manifest knows every file's size up front): each big block alone, the
/// small ones in TOC order, shared among `jobs`.
fn batches(b: &DirBackup, jobs: usize) -> Vec<(u64, Vec<i32>)> {
    let size = |id: i32| -> u64 {
        let file = &b.dir.files[&id];
        let own = b.files.get(file).map_or(0, |f| f.raw_bytes);
        let los: u64 = b
            .blobs
            .get(&id)
            .into_iter()
            .flatten()
            .filter_map(|(_, n)| b.files.get(n))
            .map(|f| f.raw_bytes)
            .sum();
        own + los
    };
    let mut out: Vec<(u64, Vec<i32>)> = Vec::new();
    let mut small = Vec::new();
    for id in b.block_ids() {
        let n = size(id);
        if n >= BIG {
            out.push((n, vec![id]));
        } else {
            small.push((id, n));
        }
    }
    let share = small.len().div_ceil(jobs.max(1)).clamp(1, BATCH_ENTRIES);
    let mut batch: (u64, Vec<i32>) = (0, Vec::new());
    for (id, n) in small {
        if batch.1.len() >= share || batch.0 + n > BATCH_BYTES && !batch.1.is_empty() {
            out.push(std::mem::take(&mut batch));
        }
        batch.0 += n;
        batch.1.push(id);
    }
    if !batch.1.is_empty() {
        out.push(batch);
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.0));
    out
}

/// Restores `backup` with `jobs` pg_restores at once (see the module doc); the TOC was read
/// and the role preflight passed.
pub async fn restore(
    backup: &Arc<DirBackup>,
    storage: &Arc<dyn Storage>,
    target: &PgTarget,
    opts: &RestoreOpts,
    jobs: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    // Holds only the TOC (no data): the private directory keeps it to this user all the same.
    let dir = crate::private_fs::PrivateDir::new("restore")
        .context("creating a temp directory for --jobs")?;
    let head = dir.path().join("head.dump");
    crate::private_fs::create_file(&head)
        .and_then(|mut f| f.write_all(&backup.dir.custom_head))
        .with_context(|| format!("writing {}", head.display()))?;
    let plan = pg_archive::Plan::of(&backup.dir.toc);
    let serial = RestoreOpts {
        jobs: None,
        ..opts.clone()
    };
    let list = |name: &str, ids: &[i32]| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.path().join(name);
        write_list(&path, ids)?;
        Ok(path)
    };
    let pre = list("pre.list", &plan.pre)?;
    let run = pg::RestoreRun {
        label: "pg_restore (pre-data)",
        file: Some(&head),
        list: Some(&pre),
    };
    run_phase(target, &serial, run, cancel).await?;
    tracing::info!(entries = plan.pre.len(), "definitions restored (pre-data)");

    let labels: HashMap<i32, String> = backup
        .dir
        .toc
        .entries
        .iter()
        .map(|e| (e.dump_id, e.label()))
        .collect();
    let mut committed: Vec<String> = Vec::new();
    let total = plan.blocks.len();
    let partial = |committed: &[String], e: anyhow::Error, what: &str| {
        // Named in full up to a point; the rest counted.
        const NAMED: usize = 40;
        let names = match committed.len() {
            0 => "none".to_string(),
            n if n <= NAMED => committed.join(", "),
            n => format!("{} and {} more", committed[..NAMED].join(", "), n - NAMED),
        };
        e.context(format!(
            "restore stopped: database \"{}\" is partly restored (definitions created; data of {} of {total} tables and large-object sets committed, each verified against its own SHA-256 first: {names}; {what}); drop and recreate it, or restore again with --clean",
            target.database,
            committed.len(),
        ))
    };
    let mut pending: std::collections::VecDeque<_> = batches(backup, jobs).into();
    let mut workers = tokio::task::JoinSet::new();
    let mut waves = tokio::task::JoinSet::new();
    // Post-data pg_restores running: their entries, the tables they touch, their slots.
    let mut running: HashMap<usize, (Vec<i32>, HashSet<i32>, usize)> = HashMap::new();
    let (mut done_ids, mut post_done, mut post_busy) =
        (HashSet::new(), HashSet::new(), HashSet::new());
    let (mut slots, mut n, mut w) = (jobs, 0usize, 0usize);
    let stop = |e: anyhow::Error, committed: &[String], what: &str| {
        if e.downcast_ref::<Interrupted>().is_some() {
            e
        } else {
            partial(committed, e, what)
        }
    };
    loop {
        while slots > 0 {
            let Some((bytes, ids)) = pending.pop_front() else {
                break;
            };
            slots -= 1;
            n += 1;
            let run = FeedRun {
                backup: backup.clone(),
                storage: storage.clone(),
                target: target.clone(),
                opts: serial.clone(),
                list: Some(list(&format!("data-{n}.list"), &ids)?),
                ids: ids.clone(),
                label: "pg_restore (data)",
            };
            tracing::info!(entries = ids.len(), raw_bytes = bytes, "restoring data");
            let cancel = cancel.clone();
            workers.spawn(async move { run.run(&cancel).await.map(|()| ids) });
        }
        // A table's indexes and constraints as soon as its data committed, while other
        // tables still load, as `pg_restore -j` does; data goes first while it waits for a
        // slot. Entries touch only committed tables that no other post-data run touches, so
        // no two pg_restores wait on each other's locks (see `Plan::ready`).
        while slots > 0 && pending.is_empty() {
            let busy: HashSet<i32> = running.values().flat_map(|r| r.1.iter().copied()).collect();
            let data_done = workers.is_empty();
            let mut ids = plan.ready(&done_ids, &post_done, &post_busy, &busy);
            if ids.is_empty() && data_done && running.is_empty() {
                // Everything left is ready; should a dependency say otherwise, pg_restore
                // orders what is left itself.
                ids = plan
                    .post
                    .iter()
                    .filter(|id| !post_done.contains(*id))
                    .copied()
                    .collect();
            }
            if ids.is_empty() {
                break;
            }
            let k = if data_done { slots } else { 1 };
            slots -= k;
            w += 1;
            let tables = ids
                .iter()
                .filter_map(|id| plan.needs.get(id))
                .flat_map(|x| x.blocks.iter().copied())
                .collect();
            post_busy.extend(ids.iter().copied());
            let path = list(&format!("post-{w}.list"), &ids)?;
            running.insert(w, (ids, tables, k));
            let (target, head, cancel) = (target.clone(), head.clone(), cancel.clone());
            let opts = RestoreOpts {
                jobs: Some(k as u32),
                ..opts.clone()
            };
            waves.spawn(async move {
                let run = pg::RestoreRun {
                    label: "pg_restore (post-data)",
                    file: Some(&head),
                    list: Some(&path),
                };
                run_phase(&target, &opts, run, &cancel).await.map(|()| w)
            });
        }
        if workers.is_empty() && waves.is_empty() {
            if post_done.len() < plan.post.len() {
                anyhow::bail!("internal error: post-data entries left that nothing can run");
            }
            break;
        }
        tokio::select! {
            Some(d) = workers.join_next() => {
                slots += 1;
                match d.context("restore worker panicked")? {
                    Ok(ids) => {
                        committed.extend(ids.iter().map(|id| labels[id].clone()));
                        done_ids.extend(ids);
                    }
                    Err(e) => {
                        // The others stop too (their pg_restores are killed, uncommitted work
                        // rolls back); what already committed stays.
                        workers.shutdown().await;
                        waves.shutdown().await;
                        return Err(stop(e, &committed, "no privileges; indexes and constraints of committed tables may be partly created"));
                    }
                }
            }
            Some(r) = waves.join_next() => {
                match r.context("post-data task panicked")? {
                    Ok(w) => {
                        let (ids, _, k) = running.remove(&w).expect("every wave is recorded");
                        slots += k;
                        for id in &ids {
                            post_busy.remove(id);
                        }
                        post_done.extend(ids);
                    }
                    Err(e) => {
                        workers.shutdown().await;
                        waves.shutdown().await;
                        return Err(stop(e, &committed, "indexes, constraints and privileges incomplete"));
                    }
                }
            }
        }
    }
    tracing::info!(
        blocks = total,
        batches = n,
        post_data_runs = w,
        "data and post-data restored; restoring privileges"
    );
    if !plan.privileges.is_empty() {
        // One at a time, in archive order (see `Plan::privileges`).
        let privileges = list("privileges.list", &plan.privileges)?;
        let run = pg::RestoreRun {
            label: "pg_restore (privileges)",
            file: Some(&head),
            list: Some(&privileges),
        };
        run_phase(target, &serial, run, cancel)
            .await
            .map_err(|e| partial(&committed, e, "privileges incomplete"))?;
    }
    Ok(())
}
