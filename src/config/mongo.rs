//! MongoDB connection settings. The URI holds the password, so it travels only inside
//! [`Secret`] and, for the child, a 0600 `--config` file.

use serde::Serialize;

use super::ConfigError;
use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MongoFormat {
    /// mongodump into a private temp dir, zipped on the fly into the upload (`.zip`), as today.
    Zip,
    /// `mongodump --archive --gzip` streamed straight to storage (`.archive.gz`), no local disk.
    Archive,
}

impl MongoFormat {
    /// Object key extension.
    pub fn extension(self) -> &'static str {
        match self {
            MongoFormat::Zip => ".zip",
            MongoFormat::Archive => ".archive.gz",
        }
    }

    /// The manifest's `compression` value.
    pub fn compression(self) -> &'static str {
        match self {
            MongoFormat::Zip => "zip",
            MongoFormat::Archive => "archive-gzip",
        }
    }
}

impl std::str::FromStr for MongoFormat {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "zip" => Ok(MongoFormat::Zip),
            "archive" => Ok(MongoFormat::Archive),
            other => Err(ConfigError::invalid(
                "MONGO_FORMAT",
                format!("\"{other}\" is not one of zip, archive"),
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MongoConn {
    pub uri: Secret,
    pub databases: Vec<String>,
}

impl MongoConn {
    pub fn resolve(uri: &Secret, databases: Option<&str>) -> Result<MongoConn, ConfigError> {
        const VAR: &str = "MONGO_CONNECTION_STRING";
        let raw = uri.expose().trim();
        let rest = raw
            .strip_prefix("mongodb://")
            .or_else(|| raw.strip_prefix("mongodb+srv://"))
            .ok_or_else(|| {
                ConfigError::invalid(VAR, "must start with mongodb:// or mongodb+srv://")
            })?;
        // Host list ends at the first '/' or '?' after the userinfo (which may contain both).
        let after_at = rest.rfind('@').map(|i| &rest[i + 1..]).unwrap_or(rest);
        let hosts = after_at.split(['/', '?']).next().unwrap_or("");
        if hosts.is_empty() {
            return Err(ConfigError::invalid(
                VAR,
                "has no host; expected mongodb://user:password@host:27017/?authSource=admin",
            ));
        }
        let path_db = after_at
            .split_once('/')
            .map(|(_, p)| p.split('?').next().unwrap_or(""))
            .filter(|d| !d.is_empty())
            .map(str::to_string);
        let databases: Vec<String> = match databases {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect(),
            None => path_db.into_iter().collect(),
        };
        if databases.is_empty() {
            return Err(ConfigError::missing(
                "MONGO_DB_NAME",
                "name the MongoDB database(s) to back up (comma separated)",
            ));
        }
        for d in &databases {
            if d.contains(['/', '\\', '.', ' ', '"', '$']) {
                return Err(ConfigError::invalid(
                    "MONGO_DB_NAME",
                    format!("\"{d}\" is not a valid MongoDB database name"),
                ));
            }
        }
        Ok(MongoConn {
            uri: Secret::new(raw),
            databases,
        })
    }

    /// The URI with its password masked, for plans and logs.
    pub fn display_uri(&self) -> String {
        crate::secret::redact_urls(self.uri.expose())
    }

    /// The host list (`h1:27017,h2`), without credentials, for the manifest.
    pub fn host(&self) -> String {
        let rest = self.rest();
        let after_at = rest.rfind('@').map(|i| &rest[i + 1..]).unwrap_or(rest);
        after_at.split(['/', '?']).next().unwrap_or("").to_string()
    }

    /// The password, percent-decoded, so the redactor can also catch it when a tool echoes it
    /// decoded. `None` when the URI carries no password.
    pub fn password(&self) -> Option<Secret> {
        let rest = self.rest();
        let userinfo = &rest[..rest.rfind('@')?];
        let (_, pw) = userinfo.split_once(':')?;
        let decoded = percent_encoding::percent_decode_str(pw).decode_utf8_lossy();
        (!decoded.is_empty()).then(|| Secret::new(decoded.into_owned()))
    }

    /// The URI after its scheme (validated in [`MongoConn::resolve`]).
    fn rest(&self) -> &str {
        let raw = self.uri.expose();
        raw.strip_prefix("mongodb://")
            .or_else(|| raw.strip_prefix("mongodb+srv://"))
            .unwrap_or(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_validates() {
        let c = MongoConn::resolve(
            &Secret::new("mongodb://u:p%40ss@h1:27017,h2/app?authSource=admin"),
            None,
        )
        .unwrap();
        assert_eq!(c.databases, vec!["app"]);
        assert_eq!(c.host(), "h1:27017,h2");
        assert_eq!(c.password().unwrap().expose(), "p@ss");
        assert_eq!(
            c.display_uri(),
            "mongodb://u:***@h1:27017,h2/app?authSource=admin"
        );
        let c = MongoConn::resolve(
            &Secret::new("mongodb+srv://u:p@cluster0.x.mongodb.net/"),
            Some("a, b"),
        )
        .unwrap();
        assert_eq!(c.databases, vec!["a", "b"]);
        assert_eq!(c.host(), "cluster0.x.mongodb.net");
        let c = MongoConn::resolve(&Secret::new("mongodb://h:1/db"), None).unwrap();
        assert!(c.password().is_none());
        for (uri, dbs) in [
            ("http://h/db", None),
            ("mongodb://", Some("a")),
            ("mongodb://h/", None),
            ("mongodb://h/", Some("a.b")),
        ] {
            assert!(MongoConn::resolve(&Secret::new(uri), dbs).is_err(), "{uri}");
        }
    }
}
