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
