//! Turns flags and environment into typed, validated settings. Pure: no network, no files
//! (except reading an env file named on the command line, in `schedule`).
//!
//! Every check that can fail before anything runs lives here, so a bad setting is reported
//! with exit code 2 before a single byte is uploaded.

pub mod mongo;
pub mod postgres;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use serde::Serialize;

/// A setting that cannot be used, naming the variable or flag to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{var} {message}")]
pub struct ConfigError {
    pub var: String,
    pub message: String,
}

impl ConfigError {
    pub fn invalid(var: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            var: var.into(),
            message: message.into(),
        }
    }
    pub fn missing(var: impl Into<String>, hint: impl fmt::Display) -> Self {
        ConfigError {
            var: var.into(),
            message: format!("is not set: {hint}"),
        }
    }
}

/// A value quoted for an error message, control characters escaped (`"a\nb"`), so that a
/// stray newline cannot split the one-line error.
pub fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// Treats an empty environment variable as unset, as shells and ECS task definitions
/// frequently produce `FOO=` for "not configured".
pub fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

/// Where backups go: an S3 bucket (plus optional prefix) or a local directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Destination {
    S3 {
        bucket: String,
        prefix: Option<String>,
        force_path_style: bool,
    },
    File {
        root: std::path::PathBuf,
        /// The directory the `file://` URL names (`root` without the prefix): it must exist.
        #[serde(skip)]
        base: std::path::PathBuf,
    },
}

impl Destination {
    pub fn resolve(
        dest: Option<&str>,
        bucket: Option<&str>,
        prefix: Option<&str>,
        force_path_style: bool,
    ) -> Result<Destination, ConfigError> {
        let prefix = prefix
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty());
        if let Some(p) = prefix {
            validate_prefix(p, "BACKUP_PREFIX")?;
        }
        match dest {
            Some(d) if d.starts_with("file://") => {
                let path = &d["file://".len()..];
                if !path.starts_with('/') {
                    return Err(ConfigError::invalid(
                        "--dest",
                        format!("\"{d}\" must be an absolute file:///path"),
                    ));
                }
                let base = std::path::PathBuf::from(path);
                let mut root = base.clone();
                if let Some(p) = prefix {
                    root.push(p);
                }
                Ok(Destination::File { root, base })
            }
            Some(d) if d.starts_with("s3://") => {
                let rest = &d["s3://".len()..];
                let (b, p) = rest.split_once('/').unwrap_or((rest, ""));
                validate_bucket(b, "--dest")?;
                let p = p.trim_matches('/');
                let joined = match (p.is_empty(), prefix) {
                    (true, None) => None,
                    (true, Some(x)) => Some(x.to_string()),
                    (false, None) => Some(p.to_string()),
                    (false, Some(x)) => Some(format!("{p}/{x}")),
                };
                if let Some(j) = &joined {
                    validate_prefix(j, "--dest")?;
                }
                Ok(Destination::S3 {
                    bucket: b.to_string(),
                    prefix: joined,
                    force_path_style,
                })
            }
            Some(d) => Err(ConfigError::invalid(
                "--dest",
                format!("\"{d}\" must start with s3:// or file://"),
            )),
            None => {
                let b = bucket.ok_or_else(|| {
                    ConfigError::missing(
                        "S3_BUCKET",
                        "name the backup bucket (or pass --dest s3://bucket or file:///dir)",
                    )
                })?;
                validate_bucket(b, "S3_BUCKET")?;
                Ok(Destination::S3 {
                    bucket: b.to_string(),
                    prefix: prefix.map(str::to_string),
                    force_path_style,
                })
            }
        }
    }

    /// The key prefix under which every object of this destination lives ("" or "a/b/").
    pub fn key_prefix(&self) -> String {
        match self {
            Destination::S3 {
                prefix: Some(p), ..
            } => format!("{p}/"),
            _ => String::new(),
        }
    }

    pub fn display(&self) -> String {
        match self {
            Destination::S3 {
                bucket,
                prefix: Some(p),
                ..
            } => format!("s3://{bucket}/{p}"),
            Destination::S3 {
                bucket,
                prefix: None,
                ..
            } => format!("s3://{bucket}"),
            Destination::File { root, .. } => format!("file://{}", root.display()),
        }
    }
}

fn validate_prefix(p: &str, var: &str) -> Result<(), ConfigError> {
    if p.split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        || p.contains('\\')
    {
        return Err(ConfigError::invalid(
            var,
            format!("\"{p}\" is not a usable key prefix (no empty, '.' or '..' segments)"),
        ));
    }
    Ok(())
}

/// S3's bucket naming rules (general purpose buckets).
pub fn validate_bucket(b: &str, var: &str) -> Result<(), ConfigError> {
    let ok_chars = b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    let edges = b
        .as_bytes()
        .first()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && b.as_bytes()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    let ip_like = b.split('.').count() == 4 && b.split('.').all(|p| p.parse::<u8>().is_ok());
    if !(3..=63).contains(&b.len()) || !ok_chars || !edges || b.contains("..") || ip_like {
        return Err(ConfigError::invalid(
            var,
            format!("\"{b}\" is not a valid S3 bucket name (3-63 characters: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"),
        ));
    }
    Ok(())
}

/// The stage named by `--stage`/`STAGE` for a command that creates or reads ECS and
/// EventBridge resources: present, well-formed and short enough for every derived name.
pub fn scheduled_stage(stage: Option<String>) -> Result<String, ConfigError> {
    let stage = non_empty(stage)
        .ok_or_else(|| ConfigError::missing("--stage", "name the stage (e.g. --stage prod)"))?;
    validate_stage(&stage, "--stage")?;
    Ok(stage)
}

/// Stage names end up in object keys, task-definition families and rule names. One rule for
/// every command, the same as `schedule`'s and the stack's (infra/backhaul.yaml): a stage
/// that backs up must also be one that can be scheduled, listed and pruned.
pub fn validate_stage(s: &str, var: &str) -> Result<(), ConfigError> {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-');
    if !ok {
        return Err(ConfigError::invalid(
            var,
            format!(
                "{} must be lowercase letters, digits and '-', starting and ending with a letter or digit, e.g. dev, uat or prod",
                quoted(s)
            ),
        ));
    }
    let max = crate::aws::names::MAX_STAGE;
    if s.len() > max {
        return Err(ConfigError::invalid(
            var,
            format!(
                "{} is {} characters: a stage has at most {max}, so that the rule name backhaul-<stage> fits EventBridge's {}",
                quoted(s),
                s.len(),
                crate::aws::names::MAX_RULE_NAME
            ),
        ));
    }
    Ok(())
}

/// The zone backup timestamps are written in: an IANA name or a fixed offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    Named(chrono_tz::Tz),
    Fixed(FixedOffset),
}

impl Default for Zone {
    fn default() -> Self {
        Zone::Named(chrono_tz::UTC)
    }
}

impl FromStr for Zone {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Zone, ConfigError> {
        let s = s.trim();
        if let Ok(tz) = chrono_tz::Tz::from_str(s) {
            return Ok(Zone::Named(tz));
        }
        parse_offset(s).map(Zone::Fixed).ok_or_else(|| {
            ConfigError::invalid(
                "BACKUP_TIMEZONE",
                format!("\"{s}\" is not an IANA time zone (e.g. Asia/Singapore) or a fixed offset (e.g. +08:00)"),
            )
        })
    }
}

fn parse_offset(s: &str) -> Option<FixedOffset> {
    let s = s.strip_prefix("UTC").unwrap_or(s);
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || rest.matches(':').count() > 1 {
        return None;
    }
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i32>().ok()?, 0),
        4 => (
            digits[..2].parse::<i32>().ok()?,
            digits[2..].parse::<i32>().ok()?,
        ),
        _ => return None,
    };
    if h > 14 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

impl Zone {
    pub fn at(&self, t: DateTime<Utc>) -> DateTime<FixedOffset> {
        match self {
            Zone::Named(tz) => t.with_timezone(tz).fixed_offset(),
            Zone::Fixed(o) => t.with_timezone(o),
        }
    }

    /// Interprets a wall-clock time read back from a key. Ambiguous times (DST fold) take the
    /// earlier instant; times in a DST gap cannot come from us and are rejected.
    pub fn local_to_instant(&self, naive: chrono::NaiveDateTime) -> Option<DateTime<FixedOffset>> {
        match self {
            Zone::Named(tz) => tz
                .from_local_datetime(&naive)
                .earliest()
                .map(|t| t.fixed_offset()),
            Zone::Fixed(o) => o.from_local_datetime(&naive).earliest(),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Zone::Named(tz) => tz.name().to_string(),
            Zone::Fixed(o) => o.to_string(),
        }
    }

    /// A chrono-tz zone for calendar bucketing in retention (fixed offsets map to Etc/GMT±N
    /// only for whole hours; other offsets bucket in UTC shifted by the offset).
    pub fn bucket_zone(&self) -> chrono_tz::Tz {
        match self {
            Zone::Named(tz) => *tz,
            Zone::Fixed(o) => {
                let secs = o.local_minus_utc();
                if secs % 3600 == 0 {
                    // POSIX Etc zones invert the sign: Etc/GMT-8 is UTC+8.
                    let name = match secs / 3600 {
                        0 => "Etc/UTC".to_string(),
                        h if h > 0 => format!("Etc/GMT-{h}"),
                        h => format!("Etc/GMT+{}", -h),
                    };
                    chrono_tz::Tz::from_str(&name).unwrap_or(chrono_tz::UTC)
                } else {
                    chrono_tz::UTC
                }
            }
        }
    }
}

/// How a PostgreSQL dump is compressed on its way to storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PgCompression {
    /// `pg_dump -Fc -Z0` compressed in-process by multi-threaded zstd (`.dump.zst`).
    Zstd,
    /// pg_dump's own compression (`.dump`, restorable by pg_restore directly, as today).
    Pg,
    /// No compression (`.dump`).
    None,
}

impl FromStr for PgCompression {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "zstd" => Ok(PgCompression::Zstd),
            "pg" => Ok(PgCompression::Pg),
            "none" => Ok(PgCompression::None),
            // No aliases: "gzip" used to mean pg_dump's own compression, silently.
            other => Err(ConfigError::invalid(
                "PG_COMPRESSION",
                format!("\"{other}\" is not one of zstd (default, .dump.zst), pg (pg_dump's own compression, .dump) or none"),
            )),
        }
    }
}

#[cfg(test)]
mod stage_tests {
    use super::*;
    use crate::aws::names::MAX_STAGE;

    #[test]
    fn longest_stage_fits_every_name() {
        let stage = "a".repeat(MAX_STAGE);
        assert!(validate_stage(&stage, "--stage").is_ok());
        let e = validate_stage(&format!("{stage}b"), "--stage").unwrap_err();
        assert_eq!(e.to_string(), format!("--stage \"{stage}b\" is 56 characters: a stage has at most 55, so that the rule name backhaul-<stage> fits EventBridge's 64"));
    }

    #[test]
    fn missing_and_malformed() {
        assert_eq!(
            scheduled_stage(Some(" ".into())).unwrap_err().to_string(),
            "--stage is not set: name the stage (e.g. --stage prod)"
        );
        assert!(scheduled_stage(Some("Prod".into())).is_err());
        assert_eq!(scheduled_stage(Some("prod".into())).unwrap(), "prod");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_parse() {
        assert_eq!(
            "Asia/Singapore".parse::<Zone>().unwrap().name(),
            "Asia/Singapore"
        );
        assert_eq!("+08:00".parse::<Zone>().unwrap().name(), "+08:00");
        assert_eq!("-0530".parse::<Zone>().unwrap().name(), "-05:30");
        assert_eq!("UTC+8".parse::<Zone>().unwrap().name(), "+08:00");
        for bad in ["Mars/Olympus", "+25:00", "8", "+08:00:00", ""] {
            assert!(bad.parse::<Zone>().is_err(), "{bad}");
        }
        let z: Zone = "+08:00".parse().unwrap();
        assert_eq!(z.bucket_zone().name(), "Etc/GMT-8");
    }

    #[test]
    fn destinations() {
        let d = Destination::resolve(None, Some("my-bucket"), Some("/backups/"), false).unwrap();
        assert_eq!(d.key_prefix(), "backups/");
        let d = Destination::resolve(Some("s3://b-1/a/b"), None, None, true).unwrap();
        assert_eq!(d.display(), "s3://b-1/a/b");
        let d = Destination::resolve(Some("file:///var/backups"), None, None, false).unwrap();
        assert_eq!(d.display(), "file:///var/backups");
        for (dest, bucket) in [
            (None, None),
            (None, Some("Bad_Bucket")),
            (Some("ftp://x"), None),
            (None, Some("ab")),
            (None, Some("192.168.1.1")),
            (Some("file://relative"), None),
        ] {
            assert!(
                Destination::resolve(dest, bucket, None, false).is_err(),
                "{dest:?} {bucket:?}"
            );
        }
    }

    #[test]
    fn stages() {
        for good in ["dev", "uat", "prod", "prod-eu-1", "1st"] {
            validate_stage(good, "STAGE").unwrap();
        }
        for bad in ["", "Prod", "-dev", "prod-", "dev_1", "dev/1", "dév", "a\nb"] {
            assert!(validate_stage(bad, "STAGE").is_err(), "{bad}");
        }
    }
}
