//! The setup most integration tests share, in one call: a throwaway cluster with the login
//! role `app` and its databases (FIXTURE_SQL, or SQL of the test's own), a fresh bucket, and
//! `backhaul` commands already pointed at both (moto, `S3_BUCKET`, `STAGE=prod`, the team's
//! `PG_DB_*` variables).

use super::{backhaul_moto, moto, pg_env, summaries, Pg, FIXTURE_SQL};

/// A password with every character a URL or a shell could mangle.
pub const APP_PASSWORD: &str = "p@ss:w/rd%#?&=";

pub struct Fixture {
    pub pg: Pg,
    pub bucket: String,
    pub password: String,
}

pub struct FixtureBuilder {
    hint: String,
    password: String,
    databases: Vec<(String, String)>,
}

impl Fixture {
    /// Role `app` (password [`APP_PASSWORD`]) and database `app` holding FIXTURE_SQL.
    pub fn builder(hint: &str) -> FixtureBuilder {
        FixtureBuilder {
            hint: hint.to_string(),
            password: APP_PASSWORD.to_string(),
            databases: vec![("app".to_string(), FIXTURE_SQL.to_string())],
        }
    }

    pub fn start(hint: &str) -> Fixture {
        Fixture::builder(hint).start()
    }

    /// `backhaul` against moto, in this fixture's bucket and stage `prod`.
    pub fn cmd(&self) -> assert_cmd::Command {
        store_cmd(&self.bucket)
    }

    /// `backhaul backup` of `databases` (comma separated), configured the way a team's
    /// task definition does it.
    pub fn backup(&self, databases: &str) -> assert_cmd::Command {
        let mut cmd = self.cmd();
        cmd.arg("backup");
        pg_env(&mut cmd, &self.pg, "app", &self.password, databases);
        cmd
    }

    /// A `postgresql://` URL to `db` as `app`, the password percent-encoded.
    pub fn url(&self, db: &str) -> String {
        app_url(&self.pg, &self.password, db)
    }

    /// The manifest written beside `key` in this fixture's bucket.
    pub fn manifest(&self, key: &str) -> serde_json::Value {
        manifest(&self.bucket, key)
    }
}

impl FixtureBuilder {
    pub fn password(mut self, password: &str) -> Self {
        self.password = password.to_string();
        self
    }

    /// Replaces the databases: `name` created and loaded with `sql` (empty: no SQL).
    pub fn databases(mut self, databases: &[(&str, &str)]) -> Self {
        self.databases = databases
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        self
    }

    pub fn start(self) -> Fixture {
        let pg = Pg::start();
        pg.create_user("app", &self.password);
        for (name, sql) in &self.databases {
            pg.create_db(name);
            if !sql.is_empty() {
                pg.psql(name, sql);
            }
        }
        Fixture {
            pg,
            bucket: moto().bucket(&self.hint),
            password: self.password,
        }
    }
}

/// `backhaul` against moto in `bucket`, stage `prod`.
pub fn store_cmd(bucket: &str) -> assert_cmd::Command {
    let mut cmd = backhaul_moto();
    cmd.env("S3_BUCKET", bucket).env("STAGE", "prod");
    cmd
}

/// A `postgresql://` URL to `db` on `pg` as `app`, the password percent-encoded.
pub fn app_url(pg: &Pg, password: &str, db: &str) -> String {
    let enc = percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC);
    format!("postgresql://app:{enc}@127.0.0.1:{}/{db}", pg.port)
}

/// The manifest written beside `key`.
pub fn manifest(bucket: &str, key: &str) -> serde_json::Value {
    serde_json::from_slice(&moto().get(bucket, &format!("{key}.manifest.json"))).unwrap()
}

/// The key of the (first) artifact a backup reported ok.
pub fn artifact_key(stdout: &[u8]) -> String {
    let lines = summaries(stdout);
    let line = lines
        .iter()
        .find(|l| l["event"] == "artifact")
        .expect("an artifact line");
    assert_eq!(line["status"], "ok", "{line}");
    line["key"].as_str().unwrap().to_string()
}
