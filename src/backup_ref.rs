//! How a person names a backup: the short id `list` shows, the full key, `latest`, or the key
//! timestamp (with `--database`/`--kind` when a run holds several artifacts).
//!
//! The id is the start of the SHA-256 of the object key: derived from the key alone, so it is
//! the same in every listing and on every machine, needs no state, and is hex a person can
//! type. `list` shows 8 characters (more only when two listed keys share those 8); any unique
//! prefix of 4 or more is accepted, and a prefix that fits several backups is refused with
//! the list of them.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::catalog::{self, Entry, Filter, Problem};
use crate::config::Zone;
use crate::layout::TS_FORMAT;
use crate::storage::Storage;

/// Characters `list` shows of an id.
pub const SHORT: usize = 8;
/// The fewest characters accepted as an id (shorter would match half a listing).
pub const MIN: usize = 4;

/// The full id of `key`: 64 lowercase hex characters.
pub fn full(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The ids to show for `keys`: [`SHORT`] characters each, longer where two would coincide,
/// so every shown id names one key of the listing.
pub fn shown(keys: &[&str]) -> Vec<String> {
    use std::collections::HashSet;
    let ids: Vec<String> = keys.iter().map(|k| full(k)).collect();
    let distinct = ids.iter().collect::<HashSet<_>>().len();
    let len = (SHORT..64)
        .step_by(2)
        .find(|&len| {
            ids.iter()
                .map(|id| &id[..len])
                .collect::<HashSet<_>>()
                .len()
                == distinct
        })
        .unwrap_or(64);
    ids.iter().map(|id| id[..len].to_string()).collect()
}

/// What the user typed, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Reference {
    Latest,
    /// A full object key (it has a `/`).
    Key(String),
    /// A key timestamp, `2024-03-09_07h05m03s`.
    Timestamp(String),
    /// A hex prefix of an id, lowercased.
    Id(String),
    /// None of these: reported as not a key of this layout.
    Other(String),
}

impl Reference {
    pub fn parse(s: &str) -> Reference {
        let s = s.trim();
        if s == "latest" {
            Reference::Latest
        } else if s.contains('/') {
            Reference::Key(s.to_string())
        } else if chrono::NaiveDateTime::parse_from_str(s, TS_FORMAT).is_ok() {
            Reference::Timestamp(s.to_string())
        } else if (MIN..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Reference::Id(s.to_ascii_lowercase())
        } else {
            Reference::Other(s.to_string())
        }
    }

    /// Needs the stage listed to be resolved.
    pub fn needs_listing(&self) -> bool {
        matches!(self, Reference::Timestamp(_) | Reference::Id(_))
    }
}

/// The entries `r` names among `entries` (already filtered by kind/database). Entries whose
/// object is gone never match; for a timestamp, a run's cluster globals are left out unless
/// they are all that matches (they are asked for by `restore-globals`).
pub fn matching<'a>(entries: &'a [Entry], r: &Reference, filter: &Filter) -> Vec<&'a Entry> {
    let live = entries
        .iter()
        .filter(|e| e.problem != Some(Problem::ObjectMissing) && filter.matches(&e.parsed));
    match r {
        Reference::Id(prefix) => live.filter(|e| full(&e.key).starts_with(prefix)).collect(),
        Reference::Timestamp(ts) => {
            let all: Vec<&Entry> = live.filter(|e| &e.parsed.timestamp == ts).collect();
            let dbs: Vec<&Entry> = all.iter().copied().filter(|e| !e.parsed.globals).collect();
            if dbs.is_empty() {
                all
            } else {
                dbs
            }
        }
        Reference::Key(k) => live.filter(|e| &e.key == k).collect(),
        Reference::Latest => live.filter(|e| !e.parsed.globals).take(1).collect(),
        Reference::Other(_) => Vec::new(),
    }
}

/// "a1b2c3d4 prod/…/backup_prod_app_….dump.zst, …" for an ambiguity error.
pub fn describe(matches: &[&Entry]) -> String {
    let keys: Vec<&str> = matches.iter().map(|e| e.key.as_str()).collect();
    shown(&keys)
        .into_iter()
        .zip(&keys)
        .map(|(id, k)| format!("{id} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves `key|latest` to one entry. An explicit key is looked up directly (it may belong
/// to another stage than the one configured); `latest` lists the stage. An entry without a
/// readable manifest also says whether backhaul wrote its object (see [`Entry::trust`]).
pub async fn resolve(
    storage: &Arc<dyn Storage>,
    prefix: &str,
    stage: &str,
    zone: &Zone,
    key: &str,
    filter: &Filter,
) -> Result<Entry, catalog::CatalogError> {
    let reference = Reference::parse(key);
    let (mut e, info) = if reference.needs_listing() {
        let entries = catalog::load(storage, prefix, stage, zone, filter).await?;
        let found = matching(&entries, &reference, filter);
        let e = match found[..] {
            [one] => one.clone(),
            [] => {
                return Err(catalog::CatalogError::NotFound(format!(
                    "{key} in stage {stage} ({})",
                    filter.describe()
                )))
            }
            _ => {
                return Err(catalog::CatalogError::Ambiguous {
                    reference: key.to_string(),
                    count: found.len(),
                    matches: describe(&found),
                })
            }
        };
        let info = match e.manifest {
            Some(_) => None,
            None => storage.head(&e.key).await?,
        };
        (e, info)
    } else if key == "latest" {
        let entries = catalog::load(storage, prefix, stage, zone, filter).await?;
        let e = catalog::pick(&entries, key, filter)?.clone();
        let info = match e.manifest {
            Some(_) => None,
            None => storage.head(&e.key).await?,
        };
        (e, info)
    } else {
        let parsed = crate::layout::parse_key(prefix, key, zone)
            .ok_or_else(|| catalog::CatalogError::NotAnArtifact(key.to_string()))?;
        let info = storage
            .head(key)
            .await?
            .ok_or_else(|| catalog::CatalogError::NotFound(key.to_string()))?;
        let mut e = catalog::entry(key.to_string(), parsed, info.size, info.last_modified);
        match catalog::fetch_manifest(storage, &crate::layout::manifest_key(key)).await {
            Ok(m) => e.manifest = m,
            Err(err) => {
                e.problem = Some(catalog::Problem::ManifestUnreadable(catalog::unreadable(
                    err,
                )))
            }
        }
        (e, Some(info))
    };
    e.written_by_backhaul = info.is_some_and(|i| i.written_by_backhaul);
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup whose object is gone (its manifest left) is never what an id, a timestamp or
    /// `latest` picks: restoring it could only fail, and an older live one may fit instead.
    #[test]
    fn entries_without_their_object_never_match() {
        let zone = Zone::default();
        let at = |ts: &str, db: &str, missing: bool| {
            let key = format!("prod/{ts}_PGSQL/backup_prod_{db}_{ts}.dump.zst");
            let parsed = crate::layout::parse_key("", &key, &zone).unwrap();
            let mut e = catalog::entry(key, parsed, 1, None);
            e.problem = missing.then_some(Problem::ObjectMissing);
            e
        };
        // Newest first, as the catalog lists them.
        let entries = [
            at("2024-03-10_07h05m03s", "app", true),
            at("2024-03-09_07h05m03s", "app", false),
        ];
        let (gone, live) = (&entries[0], &entries[1]);
        let any = Filter::default();
        let id = |e: &Entry| Reference::parse(&full(&e.key)[..SHORT]);
        let keys = |found: Vec<&Entry>| found.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        assert!(matching(&entries, &id(gone), &any).is_empty());
        assert_eq!(
            keys(matching(&entries, &id(live), &any)),
            vec![live.key.clone()]
        );
        let ts = Reference::parse(&gone.parsed.timestamp);
        assert!(matching(&entries, &ts, &any).is_empty());
        assert_eq!(
            keys(matching(&entries, &Reference::Latest, &any)),
            vec![live.key.clone()]
        );
        assert!(matching(&entries, &Reference::Key(gone.key.clone()), &any).is_empty());
    }

    #[test]
    fn references_are_classified() {
        assert_eq!(Reference::parse("latest"), Reference::Latest);
        assert_eq!(
            Reference::parse("prod/2024-03-09_07h05m03s_PGSQL/x.dump"),
            Reference::Key("prod/2024-03-09_07h05m03s_PGSQL/x.dump".into())
        );
        assert_eq!(
            Reference::parse("2024-03-09_07h05m03s"),
            Reference::Timestamp("2024-03-09_07h05m03s".into())
        );
        assert_eq!(
            Reference::parse("A1B2c3d4"),
            Reference::Id("a1b2c3d4".into())
        );
        assert!(matches!(Reference::parse("abc"), Reference::Other(_)));
        assert!(matches!(Reference::parse("nothex12"), Reference::Other(_)));
    }

    #[test]
    fn ids_are_stable_short_and_unique_in_a_listing() {
        let k = "prod/2024-03-09_07h05m03s_PGSQL/backup_prod_app_2024-03-09_07h05m03s.dump.zst";
        assert_eq!(full(k), full(k));
        assert_eq!(full(k).len(), 64);
        let shown = shown(&[k, "prod/other"]);
        assert!(shown.iter().all(|s| s.len() == SHORT), "{shown:?}");
        // The same key twice (never in a listing) does not grow the ids forever.
        assert_eq!(super::shown(&[k, k])[0].len(), SHORT);
    }

    /// Two keys whose ids share 8 characters are shown with more.
    #[test]
    fn colliding_ids_are_lengthened() {
        let mut by_short = std::collections::HashMap::new();
        let pair = (0..200_000).map(|i| format!("k{i}")).find_map(|k| {
            let s = full(&k)[..SHORT].to_string();
            by_short.insert(s, k.clone()).map(|other| (other, k))
        });
        // The birthday bound makes a pair all but certain within 200k keys.
        let (a, b) = pair.expect("a colliding pair");
        let ids = shown(&[&a, &b]);
        assert!(ids[0].len() > SHORT && ids[0] != ids[1], "{ids:?}");
    }
}
