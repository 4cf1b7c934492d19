//! Object keys and timestamps. The default layout is exactly the one the teams' shell scripts
//! produce, so existing buckets, lifecycle rules and runbooks keep working:
//!
//! ```text
//! [prefix/]<stage>/<ts>_PGSQL/backup_<stage>_<db>_<ts>.dump[.zst]
//! [prefix/]<stage>/<ts>_MONGO/<db>_<ts>.zip | .archive.gz
//! ```
//! plus `.age` when the artifact is encrypted (`--encrypt-to`), and beside a PostgreSQL run's
//! dumps the cluster's globals (`pg_dumpall --globals-only`):
//! `[prefix/]<stage>/<ts>_PGSQL/globals_<stage>_<ts>.sql[.zst]`.
//! with `<ts>` formatted `%Y-%m-%d_%Hh%Mm%Ss` in the configured zone. Every artifact has a
//! `<key>.manifest.json` beside it.
//!
//! A parallel dump (`backup --jobs N`, pg_dump's directory format) is one artifact made of
//! several objects under one folder:
//!
//! ```text
//! [prefix/]<stage>/<ts>_PGSQL/backup_<stage>_<db>_<ts>.pgdir/toc.dat.zst[.age]        the artifact key
//! [prefix/]<stage>/<ts>_PGSQL/backup_<stage>_<db>_<ts>.pgdir/toc.dat.zst[.age].manifest.json
//! [prefix/]<stage>/<ts>_PGSQL/backup_<stage>_<db>_<ts>.pgdir/<run_id>/<file>.zst[.age] each data file
//! ```
//! The key has four path components, so a backhaul from before directory dumps never reads one
//! as a backup (its `parse_key` wants three): it cannot half-restore or prune one. The data
//! files sit under the writing run's id, so two runs in the same second never share an object;
//! only the artifact key can collide, and that create is conditional.

use chrono::{DateTime, FixedOffset, NaiveDateTime};
use serde::{Deserialize, Serialize};

use crate::config::Zone;

pub const TS_FORMAT: &str = "%Y-%m-%d_%Hh%Mm%Ss";
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Ends the folder of a directory-format (parallel) PostgreSQL dump.
pub const DIR_SUFFIX: &str = ".pgdir";
/// The object that stands for a directory dump: its `toc.dat`, compressed like the rest.
pub const DIR_ENTRY: &str = "toc.dat";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Postgres,
    Mongo,
}

impl Kind {
    fn dir_suffix(self) -> &'static str {
        match self {
            Kind::Postgres => "_PGSQL",
            Kind::Mongo => "_MONGO",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Mongo => "mongo",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "postgres" | "pg" | "postgresql" => Ok(Kind::Postgres),
            "mongo" | "mongodb" => Ok(Kind::Mongo),
            _ => Err(format!("\"{s}\" is not postgres or mongo")),
        }
    }
}

/// The timestamp string shared by all artifacts of one run.
pub fn timestamp(t: DateTime<FixedOffset>) -> String {
    t.format(TS_FORMAT).to_string()
}

/// Builds the key of an artifact. `extension` includes the leading dot (".dump.zst").
pub fn artifact_key(
    prefix: &str,
    stage: &str,
    kind: Kind,
    db: &str,
    ts: &str,
    extension: &str,
) -> String {
    let dir = format!("{prefix}{stage}/{ts}{}", kind.dir_suffix());
    match kind {
        Kind::Postgres => format!("{dir}/backup_{stage}_{db}_{ts}{extension}"),
        Kind::Mongo => format!("{dir}/{db}_{ts}{extension}"),
    }
}

/// Key of a directory dump's artifact (its TOC). `extension` is the stored objects' suffix after
/// the raw file name (".zst", ".zst.age").
pub fn dir_artifact_key(prefix: &str, stage: &str, db: &str, ts: &str, extension: &str) -> String {
    let dir = artifact_key(prefix, stage, Kind::Postgres, db, ts, DIR_SUFFIX);
    format!("{dir}/{DIR_ENTRY}{extension}")
}

/// The folder (with its trailing `/`) that holds every object of the directory dump whose
/// artifact key is `entry_key`; `None` when the key is not a directory dump's.
pub fn dir_folder(entry_key: &str) -> Option<&str> {
    let (folder, file) = entry_key.rsplit_once('/')?;
    (folder.ends_with(DIR_SUFFIX) && file.starts_with(DIR_ENTRY))
        .then(|| &entry_key[..folder.len() + 1])
}

/// Key of one data file of a directory dump (`name` as pg_dump wrote it: "3051.dat",
/// "blobs_3060.toc", "blob_16411.dat"), written by run `run_id`.
pub fn dir_file_key(entry_key: &str, run_id: &str, name: &str, extension: &str) -> Option<String> {
    Some(format!(
        "{}{run_id}/{name}{extension}",
        dir_folder(entry_key)?
    ))
}

/// The time of the run a key belongs to, from its `<ts>_PGSQL` / `<ts>_MONGO` folder: also for
/// keys that are not artifacts (a directory dump's data files, a leftover upload), which
/// `parse_key` does not read.
pub fn run_time(prefix: &str, key: &str, zone: &Zone) -> Option<DateTime<FixedOffset>> {
    let mut parts = key.strip_prefix(prefix)?.split('/');
    let (_stage, dir) = (parts.next()?, parts.next()?);
    parts.next()?;
    let ts = dir
        .strip_suffix(Kind::Postgres.dir_suffix())
        .or_else(|| dir.strip_suffix(Kind::Mongo.dir_suffix()))?;
    zone.local_to_instant(NaiveDateTime::parse_from_str(ts, TS_FORMAT).ok()?)
}

/// Stands for the database of a globals artifact: roles belong to the cluster, and no
/// database name can clash with it in a key (ours are `backup_<stage>_<db>_<ts>`).
pub const GLOBALS: &str = "(globals)";

/// Key of a PostgreSQL run's cluster globals. `extension` includes the dot (".sql.zst").
pub fn globals_key(prefix: &str, stage: &str, ts: &str, extension: &str) -> String {
    format!("{prefix}{stage}/{ts}_PGSQL/globals_{stage}_{ts}{extension}")
}

pub fn manifest_key(artifact_key: &str) -> String {
    format!("{artifact_key}{MANIFEST_SUFFIX}")
}

/// The prefix under which all of a stage's backups live, for listing.
pub fn stage_prefix(prefix: &str, stage: &str) -> String {
    format!("{prefix}{stage}/")
}

/// An artifact key read back into its parts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParsedKey {
    pub stage: String,
    pub kind: Kind,
    pub database: String,
    pub timestamp: String,
    pub time: DateTime<FixedOffset>,
    /// Everything after `_<ts>` in the file name, e.g. ".dump.zst", ".zip".
    pub extension: String,
    /// The run's cluster globals (roles), not a database dump; `database` is [`GLOBALS`].
    pub globals: bool,
    /// A directory-format (parallel) dump: the key is its TOC object and the manifest lists
    /// its other objects. `extension` is then ".pgdir/toc.dat.zst[.age]".
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub directory: bool,
}

/// Reads a key back. Returns `None` for anything that is not an artifact in our layout (manifests,
/// foreign objects), so listings can skip them silently.
pub fn parse_key(prefix: &str, key: &str, zone: &Zone) -> Option<ParsedKey> {
    let rest = key.strip_prefix(prefix)?;
    if rest.ends_with(MANIFEST_SUFFIX) {
        return None;
    }
    let mut parts = rest.split('/');
    let (stage, dir, mut file) = (parts.next()?, parts.next()?, parts.next()?);
    // A directory dump: `<file>.pgdir/toc.dat<ext>` reads as the file `<file>.pgdir/toc.dat<ext>`.
    let dir_entry = match parts.next() {
        None => None,
        Some(entry) if file.ends_with(DIR_SUFFIX) && entry.starts_with(DIR_ENTRY) => {
            let tail = &entry[DIR_ENTRY.len()..];
            if parts.next().is_some() || !(tail.is_empty() || tail.starts_with('.')) {
                return None;
            }
            file = &rest[rest.len() - entry.len() - 1 - file.len()..];
            Some(entry)
        }
        Some(_) => return None,
    };
    let (ts, kind) = if let Some(ts) = dir.strip_suffix("_PGSQL") {
        (ts, Kind::Postgres)
    } else if let Some(ts) = dir.strip_suffix("_MONGO") {
        (ts, Kind::Mongo)
    } else {
        return None;
    };
    let naive = NaiveDateTime::parse_from_str(ts, TS_FORMAT).ok()?;
    let time = zone.local_to_instant(naive)?;
    if kind == Kind::Postgres {
        if let Some(rest) = file.strip_prefix(&format!("globals_{stage}_{ts}")) {
            return rest
                .starts_with('.')
                .then(|| ParsedKey {
                    stage: stage.to_string(),
                    kind,
                    database: GLOBALS.to_string(),
                    timestamp: ts.to_string(),
                    time,
                    extension: rest.to_string(),
                    globals: true,
                    directory: false,
                })
                .filter(|_| dir_entry.is_none());
        }
    }
    let body = match kind {
        Kind::Postgres => file.strip_prefix(&format!("backup_{stage}_"))?,
        Kind::Mongo => file,
    };
    let marker = format!("_{ts}");
    let at = body.rfind(&marker)?;
    let database = &body[..at];
    let extension = &body[at + marker.len()..];
    if database.is_empty() || !extension.starts_with('.') {
        return None;
    }
    let directory = dir_entry.is_some();
    if directory != (kind == Kind::Postgres && extension.starts_with(DIR_SUFFIX)) {
        return None;
    }
    Some(ParsedKey {
        stage: stage.to_string(),
        kind,
        database: database.to_string(),
        timestamp: ts.to_string(),
        time,
        extension: extension.to_string(),
        globals: false,
        directory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn seed_layout_is_kept() {
        let t = FixedOffset::east_opt(8 * 3600)
            .unwrap()
            .with_ymd_and_hms(2024, 3, 9, 7, 5, 3)
            .unwrap();
        let ts = timestamp(t);
        assert_eq!(ts, "2024-03-09_07h05m03s");
        assert_eq!(
            artifact_key("", "prod", Kind::Postgres, "app_db", &ts, ".dump"),
            "prod/2024-03-09_07h05m03s_PGSQL/backup_prod_app_db_2024-03-09_07h05m03s.dump"
        );
        assert_eq!(
            artifact_key("team/", "dev", Kind::Mongo, "shop", &ts, ".zip"),
            "team/dev/2024-03-09_07h05m03s_MONGO/shop_2024-03-09_07h05m03s.zip"
        );
    }

    #[test]
    fn keys_parse_back() {
        let zone: Zone = "+08:00".parse().unwrap();
        let k = parse_key(
            "",
            "prod/2024-03-09_07h05m03s_PGSQL/backup_prod_app_db_2024-03-09_07h05m03s.dump.zst",
            &zone,
        )
        .unwrap();
        assert_eq!(
            (
                k.stage.as_str(),
                k.kind,
                k.database.as_str(),
                k.extension.as_str()
            ),
            ("prod", Kind::Postgres, "app_db", ".dump.zst")
        );
        assert_eq!(k.time.to_rfc3339(), "2024-03-09T07:05:03+08:00");
        let k = parse_key(
            "x/",
            "x/dev/2024-03-09_07h05m03s_MONGO/shop_2024-03-09_07h05m03s.archive.gz",
            &zone,
        )
        .unwrap();
        assert_eq!(
            (k.kind, k.database.as_str(), k.extension.as_str()),
            (Kind::Mongo, "shop", ".archive.gz")
        );
        // Encrypted artifacts keep the whole suffix chain as their extension.
        let k = parse_key(
            "",
            "prod/2024-03-09_07h05m03s_PGSQL/backup_prod_app_db_2024-03-09_07h05m03s.dump.zst.age",
            &zone,
        )
        .unwrap();
        assert_eq!(
            (k.database.as_str(), k.extension.as_str()),
            ("app_db", ".dump.zst.age")
        );
        let k = parse_key(
            "",
            "prod/2024-03-09_07h05m03s_PGSQL/globals_prod_2024-03-09_07h05m03s.sql.zst",
            &zone,
        )
        .unwrap();
        assert_eq!(
            (k.globals, k.database.as_str(), k.extension.as_str()),
            (true, GLOBALS, ".sql.zst")
        );
        assert_eq!(
            globals_key("", "prod", "2024-03-09_07h05m03s", ".sql.zst"),
            "prod/2024-03-09_07h05m03s_PGSQL/globals_prod_2024-03-09_07h05m03s.sql.zst"
        );
        // A database called "globals" is still a database.
        let k = parse_key(
            "",
            "prod/2024-03-09_07h05m03s_PGSQL/backup_prod_globals_2024-03-09_07h05m03s.dump",
            &zone,
        )
        .unwrap();
        assert_eq!((k.globals, k.database.as_str()), (false, "globals"));
        for other in [
            "prod/2024-03-09_07h05m03s_PGSQL/globals_prod_2024-03-09_07h05m03s",
            "prod/2024-03-09_07h05m03s_PGSQL/backup_prod_app_2024-03-09_07h05m03s.dump.manifest.json",
            "prod/notes.txt",
            "prod/2024-13-09_07h05m03s_PGSQL/backup_prod_a_2024-13-09_07h05m03s.dump",
            "prod/2024-03-09_07h05m03s_PGSQL/other_2024-03-09_07h05m03s.dump",
            "prod/2024-03-09_07h05m03s_PGSQL/sub/backup_prod_a_2024-03-09_07h05m03s.dump",
            // A directory dump's data files, and its folder's other shapes, are not artifacts.
            "prod/2024-03-09_07h05m03s_PGSQL/backup_prod_a_2024-03-09_07h05m03s.pgdir/r1/3051.dat.zst",
            "prod/2024-03-09_07h05m03s_PGSQL/backup_prod_a_2024-03-09_07h05m03s.pgdir/toc.datx",
            "prod/2024-03-09_07h05m03s_PGSQL/backup_prod_a_2024-03-09_07h05m03s.dump/toc.dat.zst",
            "prod/2024-03-09_07h05m03s_PGSQL/backup_prod_a_2024-03-09_07h05m03s.pgdir",
            "prod/2024-03-09_07h05m03s_MONGO/a_2024-03-09_07h05m03s.pgdir/toc.dat.zst",
            "prod/2024-03-09_07h05m03s_PGSQL/globals_prod_2024-03-09_07h05m03s.pgdir/toc.dat.zst",
        ] {
            assert!(parse_key("", other, &zone).is_none(), "{other}");
        }
    }
}

#[cfg(test)]
mod dir_tests {
    use super::*;

    #[test]
    fn directory_dump_keys_parse_back_and_name_their_files() {
        let zone: Zone = "UTC".parse().unwrap();
        let ts = "2024-03-09_07h05m03s";
        let key = dir_artifact_key("p/", "prod", "app_db", ts, ".zst.age");
        assert_eq!(
            key,
            "p/prod/2024-03-09_07h05m03s_PGSQL/backup_prod_app_db_2024-03-09_07h05m03s.pgdir/toc.dat.zst.age"
        );
        let k = parse_key("p/", &key, &zone).unwrap();
        assert_eq!(
            (
                k.database.as_str(),
                k.extension.as_str(),
                k.directory,
                k.globals
            ),
            ("app_db", ".pgdir/toc.dat.zst.age", true, false)
        );
        assert_eq!(
            dir_file_key(&key, "r1", "3051.dat", ".zst.age").unwrap(),
            "p/prod/2024-03-09_07h05m03s_PGSQL/backup_prod_app_db_2024-03-09_07h05m03s.pgdir/r1/3051.dat.zst.age"
        );
        let single = artifact_key("p/", "prod", Kind::Postgres, "app_db", ts, ".dump.zst");
        assert!(!parse_key("p/", &single, &zone).unwrap().directory);
        assert_eq!(dir_folder(&single), None);
        // A database whose name ends in ".pgdir" still has a single-file backup.
        let odd = artifact_key("", "s", Kind::Postgres, "x.pgdir", ts, ".dump");
        assert_eq!(parse_key("", &odd, &zone).unwrap().database, "x.pgdir");
    }

    #[test]
    fn run_time_reads_any_key_under_a_run() {
        let zone: Zone = "UTC".parse().unwrap();
        let file = "p/prod/2024-03-09_07h05m03s_PGSQL/backup_prod_a_2024-03-09_07h05m03s.pgdir/r1/3051.dat.zst";
        assert_eq!(
            run_time("p/", file, &zone).unwrap().to_rfc3339(),
            "2024-03-09T07:05:03+00:00"
        );
        assert_eq!(run_time("p/", "p/prod/notes.txt", &zone), None);
        assert_eq!(
            run_time("p/", "p/prod/2024-03-09_07h05m03s_PGSQL", &zone),
            None
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parser_never_panics(key in "\\PC{0,160}") {
            let _ = parse_key("", &key, &Zone::default());
        }

        /// Every key we write parses back to what we wrote, in any zone, for any database name
        /// (underscores included) and extension.
        #[test]
        fn keys_round_trip(
            stage in "[a-z0-9][a-z0-9-]{0,15}",
            db in "[A-Za-z0-9_.-]{1,30}",
            secs in 0i64..4_000_000_000,
            offset_min in -14 * 60..=14 * 60i32,
            mongo in any::<bool>(),
            ext in prop::sample::select(vec![".dump", ".dump.zst", ".zip", ".archive.gz"]),
        ) {
            let zone = Zone::Fixed(FixedOffset::east_opt(offset_min * 60).unwrap());
            let t = zone.at(chrono::Utc.timestamp_opt(secs, 0).unwrap());
            let ts = timestamp(t);
            let kind = if mongo { Kind::Mongo } else { Kind::Postgres };
            let key = artifact_key("pre/", &stage, kind, &db, &ts, ext);
            let parsed = parse_key("pre/", &key, &zone).unwrap();
            prop_assert_eq!(parsed.stage, stage);
            prop_assert_eq!(parsed.kind, kind);
            prop_assert_eq!(parsed.database, db);
            prop_assert_eq!(parsed.extension, ext);
            prop_assert_eq!(parsed.time, t);
        }
    }
}
