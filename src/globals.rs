//! Turns a `pg_dumpall --globals-only` script into one that can be applied to any cluster,
//! any number of times, without breaking it:
//!
//! * `CREATE ROLE x` runs only when x does not exist; existing roles are altered, never
//!   dropped or recreated (a DROP in the input is left out);
//! * `ALTER ROLE x WITH …` (attributes, password) is skipped for the connecting role and the
//!   bootstrap superuser, checked when it runs: pg_dumpall writes one for the role that made
//!   the dump, and applying it would give the target's admin the source's password, or take
//!   SUPERUSER away from it;
//! * settings `IN DATABASE d` apply only where d exists;
//! * tablespaces are left out (their locations are directories on the source's server) and
//!   reported, to be created by hand.
//!
//! Pure text in, text out; the command in [`crate::commands::restore::globals`] runs it.

use crate::source::sql_lex::{self, Token};

/// The applicable script and what was left out of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rewritten {
    pub statements: Vec<String>,
    /// Statements not applied, each with the reason.
    pub skipped: Vec<String>,
}

impl Rewritten {
    pub fn script(&self) -> String {
        let mut s = self.statements.join("\n");
        s.push('\n');
        s
    }
}

/// Roles the script creates, in order.
pub fn role_names(script: &str) -> Vec<String> {
    sql_lex::statements(script)
        .iter()
        .filter_map(|st| {
            let t = sql_lex::tokens(st);
            (t.len() >= 3 && t[0].is("CREATE") && t[1].is("ROLE"))
                .then(|| t[2].name())
                .flatten()
        })
        .collect()
}

/// Dollar-quote tag for the guards; grows until the statement does not contain it.
fn tag_for(stmt: &str) -> String {
    let mut tag = "$backhaul$".to_string();
    while stmt.contains(&tag) {
        tag.insert(1, '_');
    }
    tag
}

fn guarded(cond: &str, stmt: &str) -> String {
    let tag = tag_for(stmt);
    format!("DO {tag}BEGIN IF {cond} THEN {stmt} END IF; END{tag};")
}

pub fn rewrite(script: &str) -> Rewritten {
    let mut out = Rewritten::default();
    for stmt in sql_lex::statements(script) {
        let t = sql_lex::tokens(&stmt);
        let kw = |i: usize, k: &str| t.get(i).is_some_and(|x| x.is(k));
        let name = |i: usize| t.get(i).and_then(Token::name);
        if kw(0, "DROP") {
            out.skipped
                .push(format!("{stmt} (nothing is ever dropped)"));
        } else if t.iter().any(|x| x.is("TABLESPACE")) {
            out.skipped.push(format!(
                "{stmt} (tablespaces name directories on the source server: create them by hand)"
            ));
        } else if kw(0, "CREATE") && kw(1, "ROLE") {
            let Some(role) = name(2) else {
                out.statements.push(stmt);
                continue;
            };
            out.statements.push(guarded(
                &format!(
                    "NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {})",
                    sql_lex::literal(&role)
                ),
                &stmt,
            ));
        } else if kw(0, "ALTER") && kw(1, "ROLE") && kw(3, "WITH") {
            let role = name(2).unwrap_or_default();
            let lit = sql_lex::literal(&role);
            out.statements.push(guarded(
                &format!(
                    "{lit} NOT IN (current_user, session_user) AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {lit} AND oid = 10)"
                ),
                &stmt,
            ));
        } else if kw(0, "ALTER") && kw(1, "ROLE") && kw(3, "IN") && kw(4, "DATABASE") {
            let db = name(5).unwrap_or_default();
            out.statements.push(guarded(
                &format!(
                    "EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = {})",
                    sql_lex::literal(&db)
                ),
                &stmt,
            ));
        } else {
            out.statements.push(stmt);
        }
    }
    out
}

/// The password literals (hashes) in `s`, so that a tool's error quoting a statement can be
/// redacted.
pub fn passwords(s: &str) -> Vec<String> {
    const KW: &str = "PASSWORD '";
    s.match_indices(KW)
        .filter_map(|(at, _)| {
            let after = &s[at + KW.len()..];
            let end = after.find('\'')?;
            (end > 0).then(|| after[..end].to_string())
        })
        .collect()
}

/// `PASSWORD '<hash>'` → `PASSWORD '***'`, for printing.
pub fn mask_passwords(s: &str) -> String {
    const KW: &str = "PASSWORD '";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find(KW) {
        out.push_str(&rest[..at + KW.len()]);
        let after = &rest[at + KW.len()..];
        let b = after.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\'' {
                if b.get(i + 1) == Some(&b'\'') {
                    i += 2;
                    continue;
                }
                break;
            }
            i += 1;
        }
        out.push_str("***");
        rest = &after[i.min(after.len())..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `pg_dumpall --globals-only` output (PostgreSQL 15.18), plus a tablespace, a
    /// per-database setting and a DROP the tool would only write with --clean.
    const DUMP: &str = r#"--
-- PostgreSQL database cluster dump
--

\restrict JJYX6xSdpAKTPtPwS2Hid2FxQjjmdqICCiD1IYoaNgS7J24IL1jeUxZBZBbuoqJ

SET default_transaction_read_only = off;

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

--
-- Roles
--

DROP ROLE old;
CREATE ROLE "Report Owner";
ALTER ROLE "Report Owner" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE analyst;
ALTER ROLE analyst WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:8shpM39bL7Tx2j3ZjUniLA==$hYv3nStHH0JIg82v4wxraTiatsobHLKVXMeF0EFg2VQ=:j2DISzN6sIqfBNXJ3CqnNRfZo0Pf0D2CUzLl8KGqHWs=';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;

--
-- User Configurations
--

ALTER ROLE analyst SET work_mem TO '8MB';
ALTER ROLE analyst IN DATABASE "App" SET search_path TO 'app';

--
-- Role memberships
--

GRANT readers TO analyst GRANTED BY postgres;

--
-- Tablespaces
--

CREATE TABLESPACE fast OWNER postgres LOCATION '/mnt/fast';

\unrestrict JJYX6xSdpAKTPtPwS2Hid2FxQjjmdqICCiD1IYoaNgS7J24IL1jeUxZBZBbuoqJ

--
-- PostgreSQL database cluster dump complete
--
"#;

    #[test]
    fn rewrite_snapshot() {
        let r = rewrite(DUMP);
        let shown = format!(
            "{}\n-- skipped:\n{}",
            mask_passwords(&r.script()),
            r.skipped.join("\n")
        );
        insta::assert_snapshot!(shown);
    }

    #[test]
    fn roles_are_listed() {
        assert_eq!(
            role_names(DUMP),
            vec!["Report Owner", "analyst", "postgres"]
        );
    }

    #[test]
    fn passwords_are_masked() {
        for (input, want) in [
            (
                "ALTER ROLE a WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:x==$y=:z=';",
                "ALTER ROLE a WITH LOGIN PASSWORD '***';",
            ),
            (
                "ALTER ROLE a PASSWORD 'md5abc' VALID UNTIL 'infinity';",
                "ALTER ROLE a PASSWORD '***' VALID UNTIL 'infinity';",
            ),
            (
                "PASSWORD 'it''s' x PASSWORD 'b'",
                "PASSWORD '***' x PASSWORD '***'",
            ),
            ("ALTER ROLE a WITH LOGIN;", "ALTER ROLE a WITH LOGIN;"),
        ] {
            assert_eq!(mask_passwords(input), want);
        }
    }

    #[test]
    fn password_literals_are_found() {
        assert_eq!(
            passwords(DUMP),
            vec!["SCRAM-SHA-256$4096:8shpM39bL7Tx2j3ZjUniLA==$hYv3nStHH0JIg82v4wxraTiatsobHLKVXMeF0EFg2VQ=:j2DISzN6sIqfBNXJ3CqnNRfZo0Pf0D2CUzLl8KGqHWs="]
        );
    }

    #[test]
    fn guard_tag_never_collides() {
        let s = guarded("true", "CREATE ROLE \"$backhaul$\";");
        assert!(s.starts_with("DO $_backhaul$BEGIN"), "{s}");
    }
}
