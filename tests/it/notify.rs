//! Operators know when it failed: a healthchecks-style ping on start and finish, and stdout
//! lines that CloudWatch turns into metrics (EMF).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use crate::common::*;

/// (path, JSON body) of each request the ping server received.
type Pings = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// Records every POST it receives; answers 200.
fn ping_server() -> (String, Pings) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ping/6f1c2a", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let mut len = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            log.lock()
                .unwrap()
                .push((path, serde_json::from_slice(&body).unwrap_or_default()));
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOK");
        }
    });
    (url, seen)
}

const PASSWORD: &str = "n0tify-Secret!";

#[test]
fn success_and_failure_are_pinged_without_secrets() {
    let pg = Pg::start();
    pg.create_user("app", PASSWORD);
    pg.create_db("app");
    pg.psql("app", FIXTURE_SQL);
    let bucket = moto().bucket("notify");
    let (url, seen) = ping_server();

    let mut ok = backhaul_moto();
    pg_env(&mut ok, &pg, "app", PASSWORD, "app");
    ok.env("S3_BUCKET", &bucket)
        .env("STAGE", "prod")
        .env("BACKHAUL_NOTIFY_URL", &url)
        .arg("backup")
        .assert()
        .success();
    // A new second: the same key again would be refused (two runs, one key).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut bad = backhaul_moto();
    pg_env(&mut bad, &pg, "app", PASSWORD, "app,missing_db");
    bad.env("S3_BUCKET", &bucket)
        .env("STAGE", "prod")
        .env("BACKHAUL_NOTIFY_URL", &url)
        .arg("backup")
        .assert()
        .code(1);

    let seen = seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/ping/6f1c2a/start",
            "/ping/6f1c2a",
            "/ping/6f1c2a/start",
            "/ping/6f1c2a/fail"
        ]
    );
    assert_eq!(seen[1].1["status"], "ok");
    assert_eq!(seen[1].1["artifacts"][0]["database"], "app");
    assert_eq!(seen[3].1["status"], "failed");
    let statuses: Vec<&str> = seen[3].1["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ok", "failed"]);
    let all = serde_json::to_string(&seen).unwrap();
    assert!(!all.contains(PASSWORD));
}

#[test]
fn unreachable_notify_url_does_not_fail_the_backup() {
    let pg = Pg::start();
    pg.create_user("app", PASSWORD);
    pg.create_db("app");
    let bucket = moto().bucket("notify-down");
    let mut cmd = backhaul_moto();
    pg_env(&mut cmd, &pg, "app", PASSWORD, "app");
    cmd.env("S3_BUCKET", &bucket)
        .env("STAGE", "prod")
        .env(
            "BACKHAUL_NOTIFY_URL",
            format!("http://127.0.0.1:{}/hc", free_port()),
        )
        .arg("backup")
        .assert()
        .success();
}

#[test]
fn summary_lines_are_cloudwatch_emf_records() {
    let pg = Pg::start();
    pg.create_user("app", PASSWORD);
    pg.create_db("app");
    let bucket = moto().bucket("emf");
    let mut cmd = backhaul_moto();
    pg_env(&mut cmd, &pg, "app", PASSWORD, "app,nope");
    let out = cmd
        .env("S3_BUCKET", &bucket)
        .env("STAGE", "prod")
        .arg("backup")
        .assert()
        .code(1);
    let lines = summaries(&out.get_output().stdout);
    assert_eq!(lines.len(), 2);
    for (line, success) in lines.iter().zip([1, 0]) {
        assert_eq!(line["backup_success"], success);
        assert_eq!(line["backup_failure"], 1 - success);
        assert_eq!(line["stage"], "prod");
        let emf = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(emf["Namespace"], "backhaul");
        assert_eq!(
            emf["Dimensions"],
            serde_json::json!([["stage"], ["stage", "kind", "database"]])
        );
        assert!(line["_aws"]["Timestamp"].as_i64().unwrap() > 1_700_000_000_000);
    }
    assert!(lines[0]["backup_stored_bytes"].as_u64().unwrap() > 0);
    assert!(lines[1].get("backup_stored_bytes").is_none());
}
