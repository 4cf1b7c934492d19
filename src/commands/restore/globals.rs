//! `backhaul restore-globals`: applies a run's saved cluster globals (roles, memberships,
//! role settings) to a cluster, so that a restore into a new cluster finds its owners and
//! grantees. The script is made idempotent and safe first ([`crate::globals`]) and runs in
//! one transaction: all of it or none.

use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;
use tokio_util::io::SyncIoBridge;

use crate::catalog::{self, CatalogError, Entry, Filter};
use crate::cli::RestoreGlobalsArgs;
use crate::commands::common::Store;
use crate::commands::restore::{self, contents, PgTarget};
use crate::config::ConfigError;
use crate::globals;
use crate::layout::Kind;
use crate::read_path::{self, Consumer, Decode};
use crate::source::postgres as pg;
use crate::storage::Storage;

#[derive(Debug, Serialize)]
struct Summary<'a> {
    event: &'static str,
    status: &'static str,
    key: &'a str,
    roles_created: Vec<String>,
    roles_in_backup: usize,
    statements: usize,
    skipped: &'a [String],
    role_passwords: bool,
}

pub async fn run(args: RestoreGlobalsArgs) -> anyhow::Result<()> {
    let store = Store::resolve_for_key(&args.store, &args.key)?;
    let identities = restore::load_identities(args.identity.as_deref())?;
    let target =
        match (&args.to, args.dry_run) {
            (Some(url), _) => {
                Some(PgTarget::resolve(url, "RESTORE_TO", args.pg.pg_dump_path.as_deref()).await?)
            }
            (None, true) => None,
            (None, false) => return Err(ConfigError::missing(
                "RESTORE_TO",
                "name the cluster to apply the roles to (--to postgresql://…), or pass --dry-run",
            )
            .into()),
        };
    let storage = store.open().await?;
    let entry = find(&store, &storage, &args.key).await?;
    entry.trust(args.allow_unverified)?;
    let decode = Decode::for_artifact(&entry.key, &entry.parsed.extension, identities.as_ref())?;
    let script = fetch(&storage, &entry, decode).await?;
    let rewritten = globals::rewrite(&script);
    let role_passwords = entry
        .manifest
        .as_ref()
        .and_then(|m| m.globals.as_ref())
        .is_none_or(|g| g.role_passwords);
    let in_backup = globals::role_names(&script).len();
    for s in &rewritten.skipped {
        tracing::warn!(statement = %globals::mask_passwords(s), "not applied");
    }
    let Some(target) = target.filter(|_| !args.dry_run) else {
        let mut out = format!("-- {} (dry run: nothing is applied)\n", entry.key);
        out.push_str(&globals::mask_passwords(&rewritten.script()));
        for s in &rewritten.skipped {
            out.push_str(&format!("-- skipped: {}\n", globals::mask_passwords(s)));
        }
        print!("{out}");
        return Ok(());
    };
    // psql quotes a failing statement in its error; the hashes must not reach the logs.
    let mut redactor = target.redactor.clone();
    for p in globals::passwords(&script) {
        redactor.add(&crate::secret::Secret::new(p));
    }
    let before = contents::existing_roles(&target).await?;
    tracing::info!(key = %entry.key, database = %target.database, "applying cluster globals");
    pg::psql_script(
        &target.tools,
        &target.conn,
        &target.database,
        &rewritten.script(),
        redactor,
    )
    .await
    .context("applying the cluster globals (nothing was changed: they run in one transaction)")?;
    let after = contents::existing_roles(&target).await?;
    if !role_passwords {
        tracing::warn!("these roles were saved without passwords (the source server forbade reading them): set them with ALTER ROLE … PASSWORD before anyone logs in");
    }
    let line = Summary {
        event: "restore-globals",
        status: "ok",
        key: &entry.key,
        roles_created: after.difference(&before).cloned().collect(),
        roles_in_backup: in_backup,
        statements: rewritten.statements.len(),
        skipped: &rewritten.skipped,
        role_passwords,
    };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

/// `latest` is the newest run's globals artifact; a key must name one.
async fn find(store: &Store, storage: &Arc<dyn Storage>, key: &str) -> anyhow::Result<Entry> {
    if key != "latest" {
        let e = store.find(storage, key, &Filter::default()).await?;
        if !e.parsed.globals {
            return Err(ConfigError::invalid(
                "KEY",
                format!("{key} is not a cluster globals artifact (…_PGSQL/globals_<stage>_<ts>.sql.zst)"),
            )
            .into());
        }
        return Ok(e);
    }
    let filter = Filter {
        kind: Some(Kind::Postgres),
        database: None,
    };
    let entries = catalog::load(
        storage,
        &store.dest.key_prefix(),
        &store.stage,
        &store.zone,
        &filter,
    )
    .await?;
    entries
        .into_iter()
        .find(|e| e.parsed.globals && e.problem != Some(catalog::Problem::ObjectMissing))
        .ok_or_else(|| {
            CatalogError::NotFound(format!("cluster globals in stage {}", store.stage)).into()
        })
}

/// The whole script, checked against the manifest before any of it is used.
async fn fetch(
    storage: &Arc<dyn Storage>,
    entry: &Entry,
    decode: Decode,
) -> anyhow::Result<String> {
    let expect = entry.expectation();
    let reader = storage.get(&entry.key).await?;
    let src = SyncIoBridge::new(reader);
    let bytes = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        read_path::feed(src, &decode, &mut out, expect.as_ref(), Consumer::Strict).map(|_| out)
    })
    .await
    .context("reading the globals")?
    .with_context(|| format!("reading {}", entry.key))?;
    String::from_utf8(bytes).with_context(|| format!("{} is not a text script", entry.key))
}
