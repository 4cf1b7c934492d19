//! What a pg_dump archive contains, read from its table of contents: every entry's type,
//! name and owner, and the definitions of its ACL, policy and default-privilege entries.
//!
//! The input is the schema script `pg_restore --section=pre-data --section=post-data -f -`
//! prints (or `pg_dump` with the same sections, for a live database): one `-- Name: …;
//! Type: …; Schema: …; Owner: …` header per TOC entry, then its SQL. Unlike `pg_restore -l`
//! it carries the grantees, and unlike `--schema-only` it keeps large objects and their ACLs.
//! A custom-format archive holds its whole TOC before any data, so pg_restore prints this
//! after reading only the head of the stream and exits (measured: 64 KiB fed of a 180 MB
//! archive), which is what lets restore check roles before streaming, without a download.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::sql_lex::{self, Token};

/// One TOC entry of the schema script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `TABLE`, `ACL`, `DEFAULT ACL`, `POLICY`, `BLOB`, ...
    pub kind: String,
    pub schema: String,
    pub name: String,
    /// `None` for entries without one (`-`).
    pub owner: Option<String>,
    /// The entry's SQL.
    pub body: String,
}

impl Entry {
    fn is_acl(&self) -> bool {
        self.kind == "ACL" || self.kind == "DEFAULT ACL"
    }
}

/// Reads the per-entry headers and bodies of a schema script.
pub fn parse(script: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for line in script.lines() {
        if let Some(h) = line.strip_prefix("-- Name: ") {
            if let Some(e) = header(h) {
                out.push(e);
                continue;
            }
        }
        if let Some(e) = out.last_mut() {
            if !line.starts_with("--") && !line.starts_with('\\') {
                e.body.push_str(line);
                e.body.push('\n');
            }
        }
    }
    out
}

/// `accounts own_rows; Type: POLICY; Schema: app; Owner: app_owner`
fn header(h: &str) -> Option<Entry> {
    let (name, rest) = h.split_once("; Type: ")?;
    let (kind, rest) = rest.split_once("; Schema: ")?;
    let (schema, owner) = match rest.split_once("; Owner: ") {
        Some((s, o)) => (s, Some(o)),
        None => (rest, None),
    };
    Some(Entry {
        kind: kind.to_string(),
        schema: schema.to_string(),
        name: name.to_string(),
        owner: owner
            .filter(|o| !o.is_empty() && *o != "-")
            .map(str::to_string),
        body: String::new(),
    })
}

/// The roles an archive needs in the target cluster, by why it needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles {
    /// Object owners (`ALTER … OWNER TO`): not needed with `--no-owner`.
    pub owners: BTreeSet<String>,
    /// Grantees, grantors and default-privilege roles: not needed with `--no-acl`.
    pub acl: BTreeSet<String>,
    /// Roles in policies and user mappings: needed whatever the flags.
    pub always: BTreeSet<String>,
}

impl Roles {
    /// What a restore with these flags will name.
    pub fn needed(&self, keep_owners: bool, keep_acl: bool) -> BTreeSet<String> {
        let mut all = self.always.clone();
        if keep_owners {
            all.extend(self.owners.iter().cloned());
        }
        if keep_acl {
            all.extend(self.acl.iter().cloned());
        }
        all
    }
}

pub fn roles(entries: &[Entry]) -> Roles {
    let mut r = Roles::default();
    for e in entries {
        if let Some(o) = &e.owner {
            r.owners.insert(o.clone());
        }
        let into = if e.is_acl() {
            &mut r.acl
        } else if e.kind == "POLICY" || e.kind == "USER MAPPING" {
            &mut r.always
        } else {
            continue;
        };
        for stmt in sql_lex::statements(&e.body) {
            into.extend(statement_roles(&sql_lex::tokens(&stmt)));
        }
    }
    r
}

/// Roles one GRANT / REVOKE / ALTER DEFAULT PRIVILEGES / SET SESSION AUTHORIZATION /
/// CREATE POLICY / CREATE USER MAPPING statement names (PUBLIC is not a role).
fn statement_roles(t: &[Token]) -> Vec<String> {
    let mut out = Vec::new();
    let first = |kw: &str| t.first().is_some_and(|x| x.is(kw));
    if first("SET") && t.get(1).is_some_and(|x| x.is("SESSION")) {
        out.extend(t.get(3).and_then(Token::name));
    } else if first("GRANT") || first("REVOKE") {
        grant_roles(t, &mut out);
    } else if first("ALTER") && t.get(1).is_some_and(|x| x.is("DEFAULT")) {
        if let Some(i) = find_top(t, 0, "FOR") {
            if t.get(i + 1).is_some_and(|x| x.is("ROLE") || x.is("USER")) {
                role_list(t, i + 2, &mut out);
            }
        }
        if let Some(i) = (0..t.len()).find(|&i| t[i].is("GRANT") || t[i].is("REVOKE")) {
            grant_roles(&t[i..], &mut out);
        }
    } else if first("CREATE") && t.get(1).is_some_and(|x| x.is("POLICY")) {
        if let Some(i) = find_top(t, 0, "TO") {
            role_list(t, i + 1, &mut out);
        }
    } else if first("CREATE") && t.get(1).is_some_and(|x| x.is("USER")) {
        if let Some(i) = find_top(t, 0, "FOR") {
            role_list(t, i + 1, &mut out);
        }
    }
    out.retain(|r| !r.eq_ignore_ascii_case("public"));
    out
}

fn grant_roles(t: &[Token], out: &mut Vec<String>) {
    let kw = if t[0].is("GRANT") { "TO" } else { "FROM" };
    if let Some(i) = find_top(t, 1, kw) {
        role_list(t, i + 1, out);
    }
    if let Some(i) = find_top(t, 1, "GRANTED") {
        if t.get(i + 1).is_some_and(|x| x.is("BY")) {
            out.extend(t.get(i + 2).and_then(Token::name));
        }
    }
}

/// Index of the first unquoted `kw` at parenthesis depth 0, from `from`.
fn find_top(t: &[Token], from: usize, kw: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, x) in t.iter().enumerate().skip(from) {
        match x {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth -= 1,
            _ if depth == 0 && x.is(kw) => return Some(i),
            _ => {}
        }
    }
    None
}

/// `a, "B", GROUP c` from `at` until anything that is not a name or a comma.
fn role_list(t: &[Token], mut at: usize, out: &mut Vec<String>) {
    loop {
        if t.get(at).is_some_and(|x| x.is("GROUP")) {
            at += 1;
        }
        match t.get(at) {
            Some(x @ (Token::Word(_) | Token::Ident(_)))
                if ![
                    "WITH", "GRANTED", "USING", "IN", "GRANT", "REVOKE", "SERVER",
                ]
                .iter()
                .any(|k| x.is(k)) =>
            {
                out.extend(x.name());
            }
            _ => return,
        }
        at += 1;
        if t.get(at) != Some(&Token::Punct(',')) {
            return;
        }
        at += 1;
    }
}

/// What the manifest records about an archive's contents, and what `verify --restore-into`
/// compares a restored database against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Contents {
    /// TOC entries by type (`TABLE`, `INDEX`, `BLOB`, `ACL`, ...).
    pub objects: BTreeMap<String, u64>,
    /// Objects (ACL entries aside) per owner.
    pub owners: BTreeMap<String, u64>,
    /// SHA-256 of the sorted `type schema name owner` lines: which object belongs to whom.
    pub owners_sha256: String,
    /// GRANT/REVOKE statements in ACL and default-privilege entries.
    pub acl_entries: u64,
    /// SHA-256 of those statements, sorted, each with the role it is run as.
    pub acl_sha256: String,
    /// Every role the archive names.
    pub roles: Vec<String>,
    /// Major version of the tool that printed the script; statement texts (the digests) are
    /// compared only between equal majors, counts always.
    #[serde(default)]
    pub tool_major: u32,
}

pub fn summarize(entries: &[Entry]) -> Contents {
    let mut c = Contents::default();
    let mut owned = Vec::new();
    let mut acl = Vec::new();
    for e in entries {
        *c.objects.entry(e.kind.clone()).or_default() += 1;
        if e.is_acl() {
            let mut as_role = e.owner.clone().unwrap_or_default();
            for stmt in sql_lex::statements(&e.body) {
                let t = sql_lex::tokens(&stmt);
                if t.first().is_some_and(|x| x.is("SET") || x.is("RESET")) {
                    as_role = if t[0].is("SET") {
                        t.get(3).and_then(Token::name).unwrap_or_default()
                    } else {
                        e.owner.clone().unwrap_or_default()
                    };
                    continue;
                }
                acl.push(format!("{as_role}\t{}", normalize(&stmt)));
            }
        } else if let Some(o) = &e.owner {
            *c.owners.entry(o.clone()).or_default() += 1;
            owned.push(format!("{}\t{}\t{}\t{o}", e.kind, e.schema, e.name));
        }
    }
    c.acl_entries = acl.len() as u64;
    c.owners_sha256 = digest(owned);
    c.acl_sha256 = digest(acl);
    let r = roles(entries);
    c.roles = r.needed(true, true).into_iter().collect();
    c
}

fn normalize(stmt: &str) -> String {
    stmt.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn digest(mut lines: Vec<String>) -> String {
    lines.sort();
    let mut h = Sha256::new();
    for l in lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// Differences between what the archive held and what a restore produced, one sentence each.
/// Owners are not compared with `--no-owner`, ACL entries not with `--no-acl`, nor with
/// `--no-owner` (the owner's own grants then name the restoring role).
pub fn compare(expected: &Contents, got: &Contents, owners: bool, acl: bool) -> Vec<String> {
    let acl = acl && owners;
    let texts = expected.tool_major == got.tool_major;
    let mut diffs = Vec::new();
    let kinds: BTreeSet<&String> = expected.objects.keys().chain(got.objects.keys()).collect();
    for k in kinds {
        if !acl && (k == "ACL" || k == "DEFAULT ACL") {
            continue;
        }
        let (a, b) = (
            expected.objects.get(k).copied().unwrap_or(0),
            got.objects.get(k).copied().unwrap_or(0),
        );
        if a != b {
            diffs.push(format!("{k}: {a} in the backup, {b} restored"));
        }
    }
    if owners {
        if expected.owners != got.owners {
            diffs.push(format!(
                "owners differ: backup {:?}, restored {:?}",
                expected.owners, got.owners
            ));
        } else if texts && expected.owners_sha256 != got.owners_sha256 {
            diffs.push("owners differ: same counts, different objects per owner".into());
        }
    }
    if acl {
        if expected.acl_entries != got.acl_entries {
            diffs.push(format!(
                "ACL entries: {} in the backup, {} restored",
                expected.acl_entries, got.acl_entries
            ));
        } else if texts && expected.acl_sha256 != got.acl_sha256 {
            diffs.push("ACL entries differ (same number, different grants)".into());
        }
    }
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real output of `pg_restore --section=pre-data --section=post-data -f -` (PostgreSQL
    /// 15.18) for the schema in testdata/toc_schema.sql.
    const SCRIPT: &str = include_str!("testdata/toc_sections.sql");

    #[test]
    fn entries_and_owners_are_read() {
        let e = parse(SCRIPT);
        let kinds: Vec<&str> = e.iter().map(|e| e.kind.as_str()).collect();
        assert!(kinds.contains(&"BLOB"), "{kinds:?}");
        let daily = e
            .iter()
            .find(|e| e.kind == "TABLE" && e.name == "daily")
            .unwrap();
        assert_eq!(daily.owner.as_deref(), Some("Report Owner"));
        assert_eq!(daily.schema, "reports");
        let blob = e.iter().find(|e| e.kind == "BLOB").unwrap();
        assert_eq!(blob.owner.as_deref(), Some("writer"));
        assert!(!e.iter().any(|e| e.body.contains("\\restrict")));
    }

    #[test]
    fn roles_by_reason() {
        let r = roles(&parse(SCRIPT));
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            r.owners,
            set(&["Report Owner", "app_owner", "writer"]),
            "owners"
        );
        // Grantees, the grantor analyst (SET SESSION AUTHORIZATION) and FOR ROLE app_owner.
        assert_eq!(
            r.acl,
            set(&["analyst", "app_owner", "readers", "writer"]),
            "acl"
        );
        assert_eq!(r.always, set(&["readers"]), "policy roles");
        assert_eq!(r.needed(false, false), set(&["readers"]));
        assert_eq!(
            r.needed(false, true),
            set(&["analyst", "app_owner", "readers", "writer"])
        );
    }

    #[test]
    fn statement_forms() {
        let roles_of = |s: &str| statement_roles(&sql_lex::tokens(s));
        assert_eq!(
            roles_of("GRANT SELECT(id) ON TABLE app.\"to\" TO a, \"B c\" WITH GRANT OPTION GRANTED BY g;"),
            vec!["a", "B c", "g"]
        );
        assert_eq!(
            roles_of("REVOKE ALL ON FUNCTION f(to integer) FROM PUBLIC;"),
            Vec::<String>::new()
        );
        assert_eq!(
            roles_of(
                "ALTER DEFAULT PRIVILEGES FOR ROLE o1, o2 IN SCHEMA s GRANT SELECT ON TABLES TO r;"
            ),
            vec!["o1", "o2", "r"]
        );
        assert_eq!(
            roles_of("CREATE POLICY p ON t AS RESTRICTIVE FOR ALL TO x, PUBLIC USING ((a = 'TO y')) WITH CHECK (true);"),
            vec!["x"]
        );
        assert_eq!(
            roles_of("CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'u');"),
            vec!["bob"]
        );
        assert_eq!(
            roles_of("SET SESSION AUTHORIZATION analyst;"),
            vec!["analyst"]
        );
    }

    #[test]
    fn summary_and_comparison() {
        let c = summarize(&parse(SCRIPT));
        assert_eq!(c.objects["TABLE"], 2);
        assert_eq!(c.objects["BLOB"], 1);
        assert_eq!(c.owners["app_owner"], 7, "{:?}", c.owners);
        assert_eq!(c.acl_entries, 15);
        assert!(c.roles.contains(&"Report Owner".to_string()));
        assert!(compare(&c, &c, true, true).is_empty());
        // The same schema restored with --no-owner: everything belongs to one role.
        let other = SCRIPT.replace("Owner: app_owner", "Owner: postgres");
        let d = summarize(&parse(&other));
        assert_eq!(
            compare(&c, &d, true, true).len(),
            2,
            "{:?}",
            compare(&c, &d, true, true)
        );
        assert!(compare(&c, &d, false, true).is_empty());
        let no_grant = SCRIPT.replace("GRANT SELECT ON TABLE reports.daily TO writer;\n", "");
        let d = summarize(&parse(&no_grant));
        assert!(compare(&c, &d, true, true)[0].contains("ACL entries: 15 in the backup, 14"));
    }
}
