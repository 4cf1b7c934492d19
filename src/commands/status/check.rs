//! `backhaul status --check`: is every database of the stage backed up recently enough?
//! A run that fails, or never happens, shows as nothing at all in the store; this turns that
//! silence into an exit code any monitor or cron can act on.
//!
//! The allowed age is the schedule's longest gap plus a grace (the same window the
//! `no-backup` alarm uses), or `--max-age` for stores that are not scheduled by backhaul.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::aws::Clients;
use crate::catalog::{self, Entry};
use crate::cli::StatusArgs;
use crate::commands::common::{parse_duration, Store};
use crate::commands::schedule::alarms::{from_schedule, human, Allowance};
use crate::commands::Reported;
use crate::config::ConfigError;

pub async fn run(a: &StatusArgs, stage: &str) -> anyhow::Result<()> {
    let grace = chrono::Duration::from_std(parse_duration(&a.grace, "--grace")?)?;
    let explicit = match &a.max_age {
        Some(m) => Some(chrono::Duration::from_std(parse_duration(m, "--max-age")?)?),
        None => None,
    };
    let mut store_args = a.store.clone();
    let allowance = match explicit {
        // No AWS call at all: a file:// store needs no credentials.
        Some(max_age) => Allowance {
            max_age,
            why: format!("--max-age {}", human(max_age)),
        },
        None => {
            let c = Clients::load().await?;
            let scheduled = super::schedule_of(&c, stage).await?;
            let Some((expr, zone)) = scheduled else {
                return Err(ConfigError::invalid(
                    "--check",
                    format!("needs a schedule to know how old a backup may be, and stage {stage} has none: schedule it, or pass --max-age (e.g. --max-age 26h)"),
                )
                .into());
            };
            store_args = super::scheduled_store(&c, stage, &store_args).await?;
            from_schedule(&expr, zone.as_deref(), grace).ok_or_else(|| {
                ConfigError::invalid(
                    "--check",
                    format!("cannot tell how often schedule {expr} runs (fewer than two runs in four years?): pass --max-age"),
                )
            })?
        }
    };
    let store = Store::resolve(&store_args)?;
    let storage = store.open_existing().await?;
    let entries = catalog::load(
        &storage,
        &store.dest.key_prefix(),
        &store.stage,
        &store.zone,
        &catalog::Filter::default(),
    )
    .await?;
    let verdicts = verdicts(&entries, Utc::now(), &allowance);
    if verdicts.is_empty() {
        println!(
            "FAIL {stage}: no backups at all, allowed {} ({})",
            human(allowance.max_age),
            allowance.why
        );
        return Err(Reported(format!("stage {stage} has no backups")).into());
    }
    let bad = verdicts.iter().filter(|v| !v.ok).count();
    for v in &verdicts {
        println!("{} {}", if v.ok { "ok" } else { "FAIL" }, v.line);
    }
    if bad > 0 {
        return Err(Reported(format!(
            "{bad} of {} databases of stage {stage} overdue or failing",
            verdicts.len()
        ))
        .into());
    }
    Ok(())
}

/// One database's outcome, as one line.
#[derive(Debug, PartialEq)]
pub struct Verdict {
    pub ok: bool,
    pub line: String,
}

/// A good backup: its manifest and object are there (its bytes can be checked), and it did
/// not fail verification.
fn good(e: &Entry) -> bool {
    e.checkable() && e.verified() != Some(false)
}

/// One verdict per database of the stage (cluster globals are not a database), by kind and
/// name. `entries` are newest first, as [`catalog::load`] returns them.
pub fn verdicts(entries: &[Entry], now: DateTime<Utc>, allowance: &Allowance) -> Vec<Verdict> {
    let mut by_db: BTreeMap<(&'static str, &str), Vec<&Entry>> = BTreeMap::new();
    for e in entries.iter().filter(|e| !e.parsed.globals) {
        by_db
            .entry((e.parsed.kind.as_str(), e.parsed.database.as_str()))
            .or_default()
            .push(e);
    }
    by_db
        .into_iter()
        .map(|((kind, db), es)| {
            let name = format!("{} {kind} {db}", es[0].parsed.stage);
            let last_ok = es.iter().find(|e| good(e)).map(|e| {
                // When the backup finished, from its manifest (a good backup has one): the
                // key's time is local to the zone the run used (`BACKUP_TIMEZONE` in the
                // task), which this command need not share.
                let at = e
                    .manifest
                    .as_ref()
                    .map(|m| m.finished_at)
                    .unwrap_or_else(|| e.parsed.time.with_timezone(&Utc));
                (at, now - at)
            });
            let last = match last_ok {
                Some((at, age)) => format!(
                    "last good backup {} ({} ago)",
                    at.format("%Y-%m-%dT%H:%M:%SZ"),
                    human(age)
                ),
                None => "no good backup".to_string(),
            };
            let expected = format!("allowed {} ({})", human(allowance.max_age), allowance.why);
            let newest = es[0];
            let failing = if newest.verified() == Some(false) {
                Some(format!("newest backup {} failed verification", newest.key))
            } else {
                newest
                    .problem
                    .as_ref()
                    .map(|p| format!("newest backup {}: {p}", newest.key))
            };
            match (failing, last_ok) {
                (Some(f), _) => Verdict {
                    ok: false,
                    line: format!("{name}: {f}; {last}, {expected}"),
                },
                (None, Some((_, age))) if age <= allowance.max_age => Verdict {
                    ok: true,
                    line: format!("{name}: {last}, {expected}"),
                },
                (None, _) => Verdict {
                    ok: false,
                    line: format!("{name}: overdue: {last}, {expected}"),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Zone;

    const NOW: &str = "2026-12-06T06:00:00Z";

    /// An entry of stage prod at `ts` (key form), with a manifest unless `manifest` is false,
    /// verified as `verified` says.
    fn entry(db: &str, ts: &str, manifest: bool, verified: Option<bool>) -> Entry {
        let key = format!("prod/{ts}_PGSQL/backup_prod_{db}_{ts}.dump.zst");
        let parsed = crate::layout::parse_key("", &key, &"UTC".parse::<Zone>().unwrap()).unwrap();
        let finished = parsed.time.with_timezone(&Utc).to_rfc3339();
        let m = manifest.then(|| {
            let mut v = serde_json::json!({
                "format": 1, "tool": "backhaul", "tool_version": "0", "kind": "postgres",
                "stage": "prod", "database": db, "key": key, "timestamp": ts, "timezone": "UTC",
                "started_at": finished, "finished_at": finished, "compression": "zstd", "raw_bytes": 1,
                "stored_bytes": 1, "sha256": "00", "parts": 1,
                "source": {"dump_tool": "pg_dump", "dump_tool_version": "15", "host": "db"}
            });
            if let Some(ok) = verified {
                v["verification"] =
                    serde_json::json!({"verified_at": NOW, "ok": ok, "details": {}});
            }
            serde_json::from_value(v).unwrap()
        });
        Entry {
            key,
            parsed,
            size: 1,
            manifest: m,
            problem: None,
            last_modified: None,
            written_by_backhaul: true,
        }
    }

    /// A run in Tokyo time wrote a key 9 h "ahead" of UTC: read as UTC it looks fresh. The age
    /// is when the backup finished (the manifest), whatever zone the key is in.
    #[test]
    fn age_comes_from_the_manifest_not_the_keys_zone() {
        let mut tokyo = entry("app", "2026-12-06_05h00m00s", true, None);
        // Finished 30 h before NOW: overdue against 26 h, though the key says 1 h ago.
        tokyo.manifest.as_mut().unwrap().finished_at =
            DateTime::parse_from_rfc3339("2026-12-05T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc);
        let v = check(&[tokyo]);
        assert!(!v[0].ok, "{v:?}");
        assert!(v[0].line.contains("overdue"), "{v:?}");
    }

    fn check(entries: &[Entry]) -> Vec<Verdict> {
        let allowance =
            from_schedule("cron(0 3 * * ? *)", None, chrono::Duration::hours(2)).unwrap();
        assert_eq!(allowance.max_age, chrono::Duration::hours(26));
        verdicts(entries, NOW.parse().unwrap(), &allowance)
    }

    #[test]
    fn fresh_backups_pass() {
        let v = check(&[
            entry("app", "2026-12-06_03h00m05s", true, None),
            entry("audit", "2026-12-06_03h00m05s", true, Some(true)),
            entry("app", "2026-12-05_03h00m05s", true, None),
        ]);
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|v| v.ok), "{v:?}");
        assert_eq!(
            v[0].line,
            "prod postgres app: last good backup 2026-12-06T03:00:05Z (2h 59m ago), allowed 1day 2h (schedule cron(0 3 * * ? *): longest gap 1day + grace 2h)"
        );
    }

    #[test]
    fn overdue_failed_and_unchecked_backups_fail() {
        let v = check(&[
            // Newest of app is 27 hours old.
            entry("app", "2026-12-05_03h00m00s", true, None),
            // Newest of audit failed verification; the one before is fresh but not enough.
            entry("audit", "2026-12-06_03h00m00s", true, Some(false)),
            entry("audit", "2026-12-05_23h00m00s", true, Some(true)),
            // Only a manifest-less object (an old script's, or a killed run's): unchecked.
            entry("shop", "2026-12-06_03h00m00s", false, None),
        ]);
        assert_eq!(v.iter().filter(|v| v.ok).count(), 0, "{v:?}");
        assert!(
            v[0].line.starts_with("prod postgres app: overdue: last good backup 2026-12-05T03:00:00Z (1day 3h ago), allowed 1day 2h"),
            "{}",
            v[0].line
        );
        assert!(
            v[1].line.starts_with("prod postgres audit: newest backup prod/2026-12-06_03h00m00s_PGSQL/backup_prod_audit_2026-12-06_03h00m00s.dump.zst failed verification; last good backup 2026-12-05T23:00:00Z (7h ago)"),
            "{}",
            v[1].line
        );
        assert!(
            v[2].line
                .starts_with("prod postgres shop: overdue: no good backup, allowed"),
            "{}",
            v[2].line
        );
    }

    #[test]
    fn an_older_failed_verification_does_not_count_against_a_fresh_good_backup() {
        let v = check(&[
            entry("app", "2026-12-06_03h00m00s", true, Some(true)),
            entry("app", "2026-12-05_03h00m00s", true, Some(false)),
        ]);
        assert!(v[0].ok, "{v:?}");
    }
}
