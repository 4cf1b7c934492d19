//! `logs` and `run-task --wait`'s log echo against moto's ECS and CloudWatch Logs. The task's
//! output is written into moto's Logs by the test (moto runs no container), into the stream
//! the awslogs driver would use.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use crate::common::contract::Contract;
use crate::common::{base_env, block_on, moto, summaries};
use crate::ecs::{create_cluster, ecs, py, schedule, stage, summary};

/// moto's ECS task state machine is configured globally: tests that set it take turns.
pub fn task_states() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `immediate` (stopped at the first DescribeTasks) or `manual` with a count no test reaches
/// (running until StopTask).
fn transition(progression: &str) {
    let t = if progression == "immediate" {
        "{'progression': 'immediate'}"
    } else {
        "{'progression': 'manual', 'times': 1000000}"
    };
    py(&format!("req = urllib.request.Request(os.environ['E'] + '/moto-api/state-manager/set-transition', \
        data=json.dumps({{'model_name': 'ecs::task', 'transition': {t}}}).encode(), method='POST')\n\
        urllib.request.urlopen(req).read()"));
}

fn logs_client() -> aws_sdk_cloudwatchlogs::Client {
    aws_sdk_cloudwatchlogs::Client::new(&moto().sdk_config())
}

fn create_group(group: &str) {
    block_on(
        logs_client()
            .create_log_group()
            .log_group_name(group)
            .send(),
    )
    .unwrap();
}

/// Appends lines to a stream (created on first use), as the awslogs driver would.
fn put(group: &str, stream: &str, lines: &[&str]) {
    let c = logs_client();
    let _ = block_on(
        c.create_log_stream()
            .log_group_name(group)
            .log_stream_name(stream)
            .send(),
    );
    let now = chrono::Utc::now().timestamp_millis();
    let mut req = c
        .put_log_events()
        .log_group_name(group)
        .log_stream_name(stream);
    for (i, l) in lines.iter().enumerate() {
        req = req.log_events(
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(now + i as i64)
                .message(*l)
                .build()
                .unwrap(),
        );
    }
    block_on(req.send()).unwrap();
}

fn run_task(rec: &Contract, stage: &str) -> String {
    let out = summary(rec.backhaul().args(["run-task", "--stage", stage]));
    out["task_arn"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

fn stop(cluster: &str, id: &str) {
    block_on(
        ecs()
            .stop_task()
            .cluster(cluster)
            .task(id)
            .reason("test")
            .send(),
    )
    .unwrap();
}

/// A backhaul command through the recorder that the test can read from while it runs.
fn spawn(rec: &Contract, args: &[&str]) -> std::process::Child {
    Command::new(assert_cmd::cargo::cargo_bin("backhaul"))
        .env_clear()
        .envs(base_env())
        .env("AWS_ENDPOINT_URL", rec.endpoint())
        .env("BACKHAUL_POLL_INTERVAL", "50ms")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

const TRACE_LINE: &str = r#"{"timestamp":"2026-12-03T02:00:01.5Z","level":"INFO","message":"backup finished","target":"backhaul","targets":1}"#;

fn artifact_line(stage: &str, status: &str) -> String {
    format!(
        r#"{{"event":"artifact","status":"{status}","stage":"{stage}","kind":"postgres","database":"app","key":"{stage}/2026-12-03_02h00m00s_PGSQL/backup_{stage}_app_2026-12-03_02h00m00s.dump.zst","stored_bytes":1234,"seconds":1.0,"backup_success":1,"_aws":{{"Timestamp":1}}}}"#
    )
}

#[test]
fn logs_of_a_finished_task_as_json_text_and_run_summaries() {
    let stage = stage("logs");
    let family = format!("backhaul-{stage}");
    let group = format!("/backhaul/{stage}");
    create_cluster(&family);
    create_group(&group);
    let rec = Contract::start();
    summary(&mut schedule(&rec, &stage));
    let _turn = task_states();
    transition("immediate");
    let id = run_task(&rec, &stage);
    let art = artifact_line(&stage, "ok");
    put(
        &group,
        &format!("backhaul/backhaul/{id}"),
        &[TRACE_LINE, "pg_dump: warning: plain text", &art],
    );

    // Not a terminal: JSON lines as the task wrote them; a plain line wrapped.
    let out = rec
        .backhaul()
        .args(["logs", "--stage", &stage])
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0], TRACE_LINE);
    let wrapped: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(wrapped["message"], "pg_dump: warning: plain text");
    assert_eq!(lines[2], art);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains(&format!("task {id} (STOPPED)")), "{stderr}");
    assert!(stderr.contains("stopped: exit code 0"), "{stderr}");

    // Text for people, for the same task named by id.
    let out = rec
        .backhaul()
        .args(["logs", "--stage", &stage, "--task", &id, "--format", "text"])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "2026-12-03T02:00:01Z INFO  backup finished targets=1"
    );
    assert!(
        lines[1].ends_with(" pg_dump: warning: plain text"),
        "{text}"
    );
    assert!(
        lines[2].contains(" INFO  artifact ok ") && lines[2].contains("stored_bytes=1234"),
        "{text}"
    );
    assert!(!text.contains("_aws"), "{text}");

    // Run summaries: the second, failed run is newest.
    let id2 = run_task(&rec, &stage);
    put(
        &group,
        &format!("backhaul/backhaul/{id2}"),
        &[&artifact_line(&stage, "failed")],
    );
    let out = rec
        .backhaul()
        .args(["logs", "--stage", &stage, "--runs", "5"])
        .assert()
        .success();
    let runs = summaries(&out.get_output().stdout);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0]["task_id"], id2.as_str());
    assert_eq!(runs[0]["outcome"], "failed");
    assert_eq!(runs[1]["task_id"], id.as_str());
    assert_eq!(runs[1]["outcome"], "ok");
    assert_eq!(runs[1]["state"], "stopped");
    assert_eq!(runs[1]["exit_code"], 0);
    assert_eq!(runs[1]["artifacts"][0]["stored_bytes"], 1234);
    assert!(
        runs[1]["start"].as_str().unwrap().ends_with('Z'),
        "{runs:?}"
    );
    rec.check(&[
        "ecs:ListTasks",
        "ecs:DescribeTasks",
        "ecs:DescribeTaskDefinition",
        "logs:GetLogEvents",
        "logs:DescribeLogStreams",
    ]);
}

/// Reads a child's stdout until a line containing `want` (the child keeps running).
fn read_until(out: &mut impl BufRead, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "ended before {want}: {seen:?}"
        );
        let line = line.trim_end().to_string();
        seen.push(line.clone());
        if line.contains(want) {
            return seen;
        }
    }
}

#[test]
fn follow_prints_new_lines_and_ends_when_the_task_stops() {
    let stage = stage("follow");
    let family = format!("backhaul-{stage}");
    let group = format!("/backhaul/{stage}");
    create_cluster(&family);
    create_group(&group);
    let rec = Contract::start();
    summary(&mut schedule(&rec, &stage));
    let _turn = task_states();
    transition("manual");
    let id = run_task(&rec, &stage);
    let stream = format!("backhaul/backhaul/{id}");
    put(&group, &stream, &["first"]);
    let mut child = spawn(
        &rec,
        &["logs", "--stage", &stage, "--follow", "--format", "json"],
    );
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let before = read_until(&mut out, r#""message":"first""#);
    assert_eq!(before.len(), 1, "{before:?}");
    // Written while `logs` follows; the task stops afterwards.
    put(&group, &stream, &["second"]);
    stop(&family, &id);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    let msgs: Vec<String> = rest
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["message"].to_string())
        .collect();
    assert_eq!(msgs, ["\"second\""], "{rest}");
    assert!(
        err.contains(&format!("task {id} stopped: exit code 0 (test)")),
        "{err}"
    );
    transition("immediate");
    rec.check(&["ecs:DescribeTasks", "logs:GetLogEvents"]);
}

#[test]
fn run_task_wait_echoes_the_task_log_to_stderr() {
    let stage = stage("echo");
    let family = format!("backhaul-{stage}");
    let group = format!("/backhaul/{stage}");
    create_cluster(&family);
    create_group(&group);
    let rec = Contract::start();
    summary(&mut schedule(&rec, &stage));
    let _turn = task_states();
    transition("manual");
    let mut child = spawn(&rec, &["run-task", "--stage", &stage, "--wait"]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let started: serde_json::Value = serde_json::from_str(&first).unwrap();
    let stream = started["log_stream"].as_str().unwrap().to_string();
    let id = stream.rsplit('/').next().unwrap().to_string();
    put(&group, &stream, &[TRACE_LINE, "plain line"]);
    stop(&family, &id);
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.lines().any(|l| l == TRACE_LINE), "{err}");
    assert!(err.contains(r#""message":"plain line""#), "{err}");
    transition("immediate");
    rec.check(&["ecs:RunTask", "ecs:DescribeTasks", "logs:GetLogEvents"]);
}

/// A stage never scheduled: `logs` (also `--runs`), `status` and `run-task` say so in one
/// line and name the command that sets it up, instead of an ECS error about a missing cluster.
#[test]
fn a_stage_never_scheduled_is_one_line() {
    let stage = crate::ecs::stage("never");
    for args in [
        vec!["logs"],
        vec!["logs", "--runs", "3"],
        vec!["logs", "--task", "0123456789abcdef0123456789abcdef"],
        vec!["status"],
        vec!["status", "--json"],
        vec!["run-task"],
    ] {
        let out = crate::common::backhaul_moto()
            .args(&args)
            .args(["--stage", &stage])
            .assert()
            .code(1)
            .get_output()
            .clone();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            err.trim(),
            format!("error: nothing is scheduled for stage {stage}; `backhaul schedule --stage {stage} …` (or `--from-stack <stack>`) sets it up, see `backhaul schedule -h`"),
            "{args:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
