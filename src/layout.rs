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

use chrono::{DateTime, FixedOffset, NaiveDateTime};
use serde::{Deserialize, Serialize};

use crate::config::Zone;

pub const TS_FORMAT: &str = "%Y-%m-%d_%Hh%Mm%Ss";
pub const MANIFEST_SUFFIX: &str = ".manifest.json";

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
}

/// Reads a key back. Returns `None` for anything that is not an artifact in our layout (manifests,
/// foreign objects), so listings can skip them silently.
pub fn parse_key(prefix: &str, key: &str, zone: &Zone) -> Option<ParsedKey> {
    let rest = key.strip_prefix(prefix)?;
    if rest.ends_with(MANIFEST_SUFFIX) {
        return None;
    }
    let mut parts = rest.split('/');
    let (stage, dir, file) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
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
            return rest.starts_with('.').then(|| ParsedKey {
                stage: stage.to_string(),
                kind,
                database: GLOBALS.to_string(),
                timestamp: ts.to_string(),
                time,
                extension: rest.to_string(),
                globals: true,
            });
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
    Some(ParsedKey {
        stage: stage.to_string(),
        kind,
        database: database.to_string(),
        timestamp: ts.to_string(),
        time,
        extension: extension.to_string(),
        globals: false,
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
        ] {
            assert!(parse_key("", other, &zone).is_none(), "{other}");
        }
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
