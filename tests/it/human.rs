//! What a person at a terminal meets: clear one-line errors at the edges, short backup ids,
//! and (on a pty) human lines instead of JSON.

use crate::common::{artifact_key, Fixture};
use crate::common::{backhaul, backhaul_moto};

fn one_line_error(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// Bare `verify` says what it needs (not a garbled "KEY pass exactly one of"), before asking
/// for a bucket; a key and --since together are refused as such.
#[test]
fn bare_verify_says_what_it_needs() {
    let out = backhaul()
        .arg("verify")
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = one_line_error(&out);
    assert_eq!(
        err,
        "error: verify needs the backups to check: an id from `backhaul list`, a key, `latest`, or --since <duration> (e.g. `backhaul verify latest --stage prod`)"
    );
    let out = backhaul_moto()
        .args(["verify", "latest", "--since", "7d", "--stage", "prod"])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = one_line_error(&out);
    assert!(err.contains("not both"), "{err}");
}

/// A target database that does not exist: the restore says how to create it (no psql FATAL
/// line), and nothing is created.
#[test]
fn restore_into_a_missing_database_says_how_to_create_it() {
    let f = Fixture::start("missingdb");
    let out = f.backup("app").assert().success().get_output().clone();
    let key = artifact_key(&out.stdout);
    let out = f
        .cmd()
        .args(["restore", &key])
        .env("RESTORE_TO", f.url("nowhere"))
        .assert()
        .code(1)
        .get_output()
        .clone();
    let err = one_line_error(&out);
    assert_eq!(
        err,
        format!(
            "error: target database \"nowhere\" does not exist: create it first, e.g. `createdb -h 127.0.0.1 -p {} -U app nowhere` (a role with CREATEDB), then run the restore again",
            f.pg.port
        )
    );
    assert!(
        !err.contains("FATAL") && !err.contains(&f.password),
        "{err}"
    );
    assert_eq!(
        f.pg.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'nowhere'"
        ),
        "0"
    );
}
