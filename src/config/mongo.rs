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

/// What one backup run dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MongoScope {
    /// One artifact per `MONGO_DB_NAME` entry, each dumped with `--db`.
    Databases,
    /// One artifact holding everything the URI selects (its database, or all databases when
    /// it names none), as the old shell script's `mongodump --uri` did.
    Uri,
}

impl std::str::FromStr for MongoScope {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "databases" | "db" => Ok(MongoScope::Databases),
            "uri" => Ok(MongoScope::Uri),
            other => Err(ConfigError::invalid(
                "MONGO_SCOPE",
                format!("\"{other}\" is not one of databases, uri"),
            )),
        }
    }
}

/// The artifact name when the URI scope names no database (the old script's file name would
/// have been empty).
pub const ALL_DATABASES: &str = "all";

#[derive(Debug, Clone)]
pub struct MongoConn {
    /// The URI as configured.
    pub uri: Secret,
    /// The URI the tools get: the database moved out of the path (the real tools copy a path
    /// database into `--db`, which then conflicts with ours or narrows a restore to one
    /// folder) and, with credentials, an explicit `authSource` (the path's database, else
    /// admin), because without one the tools log in to their `--db`.
    pub tool_uri: Secret,
    /// The database named in the URI's path.
    pub uri_database: Option<String>,
    pub scope: MongoScope,
    /// Artifact names: the databases (scope `databases`), or the one name (scope `uri`).
    pub databases: Vec<String>,
}

impl MongoConn {
    /// `databases` is `MONGO_DB_NAME`; without it (or with `MONGO_SCOPE=uri`) the dump is what
    /// the URI selects.
    pub fn resolve(uri: &Secret, databases: Option<&str>) -> Result<MongoConn, ConfigError> {
        MongoConn::resolve_scoped(uri, databases, None)
    }

    pub fn resolve_scoped(
        uri: &Secret,
        databases: Option<&str>,
        scope: Option<MongoScope>,
    ) -> Result<MongoConn, ConfigError> {
        const VAR: &str = "MONGO_CONNECTION_STRING";
        let raw = uri.expose().trim();
        let (scheme, rest) = ["mongodb://", "mongodb+srv://"]
            .iter()
            .find_map(|p| raw.strip_prefix(p).map(|r| (*p, r)))
            .ok_or_else(|| {
                ConfigError::invalid(VAR, "must start with mongodb:// or mongodb+srv://")
            })?;
        // Host list ends at the first '/' or '?' after the userinfo (which may contain both).
        let at = rest.rfind('@').map(|i| i + 1).unwrap_or(0);
        let (userinfo, after_at) = rest.split_at(at);
        let hosts_end = after_at.find(['/', '?']).unwrap_or(after_at.len());
        let (hosts, tail) = after_at.split_at(hosts_end);
        if hosts.is_empty() {
            return Err(ConfigError::invalid(
                VAR,
                "has no host; expected mongodb://user:password@host:27017/?authSource=admin",
            ));
        }
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, q),
            None => (tail, ""),
        };
        let uri_database = Some(path.trim_start_matches('/'))
            .filter(|d| !d.is_empty())
            .map(|d| {
                percent_encoding::percent_decode_str(d)
                    .decode_utf8_lossy()
                    .into_owned()
            });
        let mut params: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        let has_auth_source = params.iter().any(|p| {
            p.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("authSource"))
        });
        // The login database the URI means: its path's database, else admin (the driver's
        // default; mongodb+srv takes it from DNS TXT). The tools would otherwise log in to
        // their --db. Only with credentials: the Go driver takes any authSource as a request
        // to log in.
        let login_db = match (&uri_database, scheme) {
            (Some(db), _) => Some(db.as_str()),
            (None, "mongodb://") => Some("admin"),
            (None, _) => None,
        };
        if let (Some(db), false, false) = (login_db, has_auth_source, userinfo.is_empty()) {
            let enc = percent_encoding::utf8_percent_encode(db, percent_encoding::NON_ALPHANUMERIC);
            params.push(format!("authSource={enc}"));
        }
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        let tool_uri = format!("{scheme}{userinfo}{hosts}/{query}");

        let named: Vec<String> = databases
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect();
        let scope = scope.unwrap_or(if named.is_empty() {
            MongoScope::Uri
        } else {
            MongoScope::Databases
        });
        let databases = match scope {
            MongoScope::Databases if named.is_empty() => return Err(ConfigError::missing(
                "MONGO_DB_NAME",
                "name the MongoDB database(s) to back up (comma separated), or set MONGO_SCOPE=uri",
            )),
            MongoScope::Databases => named,
            MongoScope::Uri if named.len() > 1 => {
                return Err(ConfigError::invalid(
                    "MONGO_DB_NAME",
                    "with MONGO_SCOPE=uri names the one artifact: give a single name",
                ))
            }
            MongoScope::Uri => vec![named
                .into_iter()
                .next()
                .or_else(|| uri_database.clone())
                .unwrap_or_else(|| ALL_DATABASES.to_string())],
        };
        for d in databases.iter().chain(uri_database.iter()) {
            if d.contains(['/', '\\', '.', ' ', '"', '$']) {
                return Err(ConfigError::invalid(
                    "MONGO_DB_NAME",
                    format!("\"{d}\" is not a valid MongoDB database name"),
                ));
            }
        }
        Ok(MongoConn {
            uri: Secret::new(raw),
            tool_uri: Secret::new(tool_uri),
            uri_database,
            scope,
            databases,
        })
    }

    /// The `--db` mongodump gets for the artifact `name`: the name itself in the databases
    /// scope; in the URI scope the URI's database, or none (every database).
    pub fn dump_database<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        match self.scope {
            MongoScope::Databases => Some(name),
            MongoScope::Uri => self.uri_database.as_deref(),
        }
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
        assert_eq!(c.scope, MongoScope::Uri);
        assert_eq!(c.dump_database("app"), Some("app"));
        assert_eq!(
            c.tool_uri.expose(),
            "mongodb://u:p%40ss@h1:27017,h2/?authSource=admin"
        );
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
        assert_eq!(c.scope, MongoScope::Databases);
        assert_eq!(
            c.tool_uri.expose(),
            "mongodb+srv://u:p@cluster0.x.mongodb.net/"
        );
        assert_eq!(c.host(), "cluster0.x.mongodb.net");
        let c = MongoConn::resolve(&Secret::new("mongodb://h:1/db"), None).unwrap();
        assert!(c.password().is_none());
        assert_eq!(c.tool_uri.expose(), "mongodb://h:1/");
        // Credentials without authSource log in to admin, as the driver would, not to --db.
        let c = MongoConn::resolve(&Secret::new("mongodb://u:p@h:1"), Some("shop")).unwrap();
        assert_eq!(c.tool_uri.expose(), "mongodb://u:p@h:1/?authSource=admin");
        // The login database stays the path's: it becomes authSource.
        let c = MongoConn::resolve(
            &Secret::new("mongodb://u:p@h:1/admin?replicaSet=rs"),
            Some("shop"),
        )
        .unwrap();
        assert_eq!(
            c.tool_uri.expose(),
            "mongodb://u:p@h:1/?replicaSet=rs&authSource=admin"
        );
        assert_eq!(c.dump_database("shop"), Some("shop"));
        // Nothing named anywhere: every database, one artifact.
        let c = MongoConn::resolve(&Secret::new("mongodb://h/"), None).unwrap();
        assert_eq!(c.databases, vec![ALL_DATABASES]);
        assert_eq!(c.dump_database(ALL_DATABASES), None);
        let c = MongoConn::resolve_scoped(
            &Secret::new("mongodb://h/?authSource=admin"),
            Some("prod"),
            Some(MongoScope::Uri),
        )
        .unwrap();
        assert_eq!(
            (c.databases.clone(), c.dump_database("prod")),
            (vec!["prod".to_string()], None)
        );
        assert!(MongoConn::resolve_scoped(
            &Secret::new("mongodb://h/"),
            None,
            Some(MongoScope::Databases)
        )
        .is_err());
        for (uri, dbs) in [
            ("http://h/db", None),
            ("mongodb://", Some("a")),
            ("mongodb://h/", Some("a.b")),
        ] {
            assert!(MongoConn::resolve(&Secret::new(uri), dbs).is_err(), "{uri}");
        }
    }
}
