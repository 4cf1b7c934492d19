//! Two audiences, one rule (src/output.rs): with stdout on a terminal (a real pty here),
//! `backup`, `list` and `restore` print human lines and `backup` a closing summary; with
//! stdout on a pipe, or with `--log-format json`, or in ECS, the JSON/EMF lines as before.
//! Snapshots have the volatile parts (timestamps, ids, sizes, durations, hashes) redacted.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

use crate::common::{backhaul_std, summaries, Fixture};

/// Runs `cmd` with stdout on a fresh pseudo-terminal (stdin null, stderr piped) and returns
/// its exit code, stdout (as the terminal received it) and stderr.
fn on_pty(mut cmd: Command) -> (i32, String, String) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills the two descriptors; null name/termios/winsize are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned here only.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // Raw mode: the bytes as written ("\n", not the terminal's "\r\n").
    // SAFETY: a zeroed termios is filled by tcgetattr before use.
    unsafe {
        use std::os::fd::AsRawFd;
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t), 0);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // The parent's copy of the slave goes with `cmd`: the master then sees EOF (EIO) once
    // the child exits.
    drop(cmd);
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let mut master = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // Linux: EIO once every slave descriptor is closed.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("reading the pty: {e}"),
        }
    }
    let status = child.wait().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8(out).unwrap(),
        err.join().unwrap(),
    )
}

/// Volatile parts of human output, replaced for snapshots.
fn filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"\d{4}-\d\d-\d\d_\d\dh\d\dm\d\ds", "[ts]"),
        (r"\b[0-9a-f]{12}\b", "[sha256]"),
        (r"\b[0-9a-f]{8}\b", "[id]"),
        (r"\d+(\.\d)? (B|KiB|MiB)\b", "[size]"),
        (r"\d+\.\dx", "[ratio]"),
        (r"\b\d+\.\ds\b", "[duration]"),
        (r"\b\d+[mh] \d\d[sm]\b", "[duration]"),
        (r"\d{4}-\d\d-\d\dT[^ ]+", "[time]"),
        // Column padding follows the widths of the values above.
        (r"[ ]{2,}", "  "),
    ]
}

/// Each line with the volatile fields (dotted paths) replaced by placeholders.
fn redact(mut lines: Vec<serde_json::Value>, fields: &[(&str, &str)]) -> Vec<serde_json::Value> {
    for line in &mut lines {
        for (path, placeholder) in fields {
            let mut v = &mut *line;
            let parts: Vec<&str> = path.split('.').collect();
            for p in &parts[..parts.len() - 1] {
                v = &mut v[*p];
            }
            let last = parts[parts.len() - 1];
            if v.get(last).is_some() {
                v[last] = serde_json::json!(placeholder);
            }
        }
    }
    lines
}

const SQL: &str = "create table t (x int, note text); insert into t select g, repeat('n', g % 40) from generate_series(1, 2000) g";

fn fixture(hint: &str) -> Fixture {
    let f = Fixture::builder(hint)
        .databases(&[("app", SQL), ("audit", "create table a (x int)")])
        .start();
    f.pg.create_db("app_copy");
    f.pg.psql("app_copy", "alter database app_copy owner to app");
    f
}

/// `backhaul` for a pty: the fixture's bucket and stage, and the log format left to the rule.
fn pty_cmd(f: &Fixture, args: &[&str]) -> Command {
    let mut cmd = backhaul_std();
    cmd.env("S3_BUCKET", &f.bucket)
        .env("STAGE", "prod")
        .env("BACKHAUL_LOG_FORMAT", "auto")
        .env("PG_DB_HOST", "127.0.0.1")
        .env("PG_DB_PORT", f.pg.port.to_string())
        .env("PG_DB_USER", "app")
        .env("PG_DB_PASSWORD", &f.password)
        .env("PG_DB_NAME", "app,audit")
        .env("RESTORE_TO", f.url("app_copy"))
        .args(args);
    cmd
}

#[test]
fn on_a_terminal_backup_list_and_restore_speak_to_a_person() {
    let f = fixture("pty-human");
    let (code, backup, err) = on_pty(pty_cmd(&f, &["backup"]));
    assert_eq!(code, 0, "{backup}\n{err}");
    assert!(!backup.contains('{'), "no JSON on a terminal: {backup}");
    let (code, list, err) = on_pty(pty_cmd(&f, &["list"]));
    assert_eq!(code, 0, "{err}");
    // The id the summary shows is the one list shows, and restore takes it.
    let id = backup
        .lines()
        .find(|l| l.contains(" app "))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_string();
    assert!(list.contains(&id), "{list}");
    let (code, restore, err) = on_pty(pty_cmd(&f, &["restore", &id]));
    assert_eq!(code, 0, "{restore}\n{err}");
    assert_eq!(f.pg.psql("app_copy", "select count(*) from t"), "2000");
    let (code, verify, err) = on_pty(pty_cmd(&f, &["verify", &id]));
    assert_eq!(code, 0, "{verify}\n{err}");
    assert!(
        verify.starts_with(&format!("verified {id} postgres app (prod/")),
        "{verify}"
    );
    insta::with_settings!({ filters => filters() }, {
        insta::assert_snapshot!("pty_backup", backup);
        insta::assert_snapshot!("pty_list", list);
        insta::assert_snapshot!("pty_restore", restore);
    });

    // A failed run on a terminal: the summary names the failure and says FAILED.
    let (code, failed, _) = on_pty({
        // Each later run has a stage of its own: keys have one-second resolution, and two
        // runs of one stage in the same second collide (the second fails, by design).
        let mut c = pty_cmd(&f, &["backup"]);
        c.env("PG_DB_NAME", "app,missing").env("STAGE", "failing");
        c
    });
    assert_eq!(code, 1, "{failed}");
    let verdict = failed.lines().last().unwrap_or_default();
    assert_eq!(verdict, "FAILED: 1 of 2 backups failed", "{failed}");

    // `--log-format json` on a terminal: the machine lines, as in ECS.
    let (code, json, _) = on_pty({
        let mut c = pty_cmd(&f, &["backup", "--log-format", "json"]);
        c.env("STAGE", "json");
        c
    });
    assert_eq!(code, 0, "{json}");
    assert_eq!(summaries(json.as_bytes()).len(), 2, "{json}");
    // ... and so in ECS (the task metadata variable is set there).
    let (code, ecs, _) = on_pty({
        let mut c = pty_cmd(&f, &["backup"]);
        c.env("ECS_CONTAINER_METADATA_URI_V4", "http://169.254.170.2/v4/x")
            .env("STAGE", "ecs");
        c
    });
    assert_eq!(code, 0, "{ecs}");
    let lines = summaries(ecs.as_bytes());
    assert_eq!(lines.len(), 2, "{ecs}");
    assert!(
        lines[0]["_aws"]["CloudWatchMetrics"].is_array(),
        "EMF: {ecs}"
    );
}

#[test]
fn off_a_terminal_the_machine_lines_are_unchanged() {
    let f = fixture("pty-machine");
    let out = f
        .backup("app,audit")
        .assert()
        .success()
        .get_output()
        .clone();
    let lines = summaries(&out.stdout);
    assert_eq!(lines.len(), 2);
    insta::assert_json_snapshot!(
        "pipe_backup",
        redact(
            lines,
            &[
                ("key", "[key]"),
                ("raw_bytes", "[bytes]"),
                ("stored_bytes", "[bytes]"),
                ("backup_stored_bytes", "[bytes]"),
                ("sha256", "[sha256]"),
                ("seconds", "[seconds]"),
                ("backup_duration_seconds", "[seconds]"),
                ("_aws.Timestamp", "[ms]")
            ]
        )
    );

    let out = f
        .cmd()
        .args(["list", "--json"])
        .assert()
        .success()
        .get_output()
        .clone();
    let rows = summaries(&out.stdout);
    insta::assert_json_snapshot!(
        "pipe_list_json",
        redact(
            rows.clone(),
            &[
                ("id", "[id]"),
                ("key", "[key]"),
                ("timestamp", "[ts]"),
                ("time", "[time]"),
                ("size", "[bytes]"),
                ("sha256", "[sha256]")
            ]
        )
    );
    // The table is the same on a pipe as on a terminal.
    let out = f.cmd().arg("list").assert().success().get_output().clone();
    insta::with_settings!({ filters => filters() }, {
        insta::assert_snapshot!("pipe_list", String::from_utf8(out.stdout).unwrap());
    });

    let key = rows[0]["key"].as_str().unwrap().to_string();
    let out = f
        .cmd()
        .args(["restore", &key])
        .env("RESTORE_TO", f.url("app_copy"))
        .assert()
        .success()
        .get_output()
        .clone();
    let line = summaries(&out.stdout);
    insta::assert_json_snapshot!(
        "pipe_restore",
        redact(
            line,
            &[
                ("key", "[key]"),
                ("raw_bytes", "[bytes]"),
                ("stored_bytes", "[bytes]"),
                ("sha256", "[sha256]"),
                ("seconds", "[seconds]")
            ]
        )
    );
}
