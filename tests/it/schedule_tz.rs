//! `schedule --timezone`: an EventBridge Scheduler schedule in a time zone instead of a UTC
//! rule, against moto through the contract recorder.

use aws_sdk_scheduler::types::FlexibleTimeWindowMode;

use crate::common::block_on;
use crate::common::contract::Contract;
use crate::common::moto;
use crate::ecs::{create_cluster, events, schedule, stage, summary};

const DLQ: &str = "arn:aws:sqs:us-east-1:123456789012:backhaul-dlq";

fn scheduler() -> aws_sdk_scheduler::Client {
    aws_sdk_scheduler::Client::new(&moto().sdk_config())
}

fn get(name: &str) -> Option<aws_sdk_scheduler::operation::get_schedule::GetScheduleOutput> {
    match block_on(scheduler().get_schedule().name(name).send()) {
        Ok(o) => Some(o),
        Err(e) => {
            assert!(e.into_service_error().is_resource_not_found_exception());
            None
        }
    }
}

fn rule_exists(name: &str) -> bool {
    block_on(events().describe_rule().name(name).send()).is_ok()
}

/// Recorded Scheduler writes: (method, path, body).
fn scheduler_writes(rec: &Contract) -> Vec<(String, String, serde_json::Value)> {
    rec.requests()
        .into_iter()
        .filter(|r| r.target.starts_with("/schedules/") && r.method != "GET")
        .map(|r| {
            let body = r.json_body();
            (r.method, r.target, body)
        })
        .collect()
}

#[test]
fn time_zone_schedule_is_idempotent_and_trades_places_with_the_rule() {
    let stage = stage("tz");
    let name = format!("backhaul-{stage}");
    let cluster_arn = create_cluster(&name);
    let rec = Contract::start();

    // Dry run first: the exact Scheduler request, nothing sent.
    let plan = rec
        .backhaul()
        .args(schedule(&rec, &stage).get_args().collect::<Vec<_>>())
        .args([
            "--timezone",
            "Asia/Singapore",
            "--dead-letter-arn",
            DLQ,
            "--dry-run",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let plan: serde_json::Value = serde_json::from_slice(&plan).unwrap();
    let ops: Vec<&str> = plan["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        [
            "ecs:RegisterTaskDefinition",
            "scheduler:CreateSchedule",
            "events:RemoveTargets",
            "events:DeleteRule"
        ]
    );
    assert!(!plan.to_string().contains("null"), "{plan}");
    assert!(rec.requests().is_empty());

    let s = summary(schedule(&rec, &stage).args([
        "--timezone",
        "Asia/Singapore",
        "--dead-letter-arn",
        DLQ,
    ]));
    assert_eq!(s["schedule"], "created");
    assert_eq!(s["timezone"], "Asia/Singapore");
    assert_eq!(s["removed_rule"], false);
    let got = get(&name).expect("schedule created");
    assert_eq!(got.schedule_expression(), Some("cron(0 3 * * ? *)"));
    assert_eq!(got.schedule_expression_timezone(), Some("Asia/Singapore"));
    assert_eq!(
        got.flexible_time_window().unwrap().mode(),
        &FlexibleTimeWindowMode::Off
    );
    let t = got.target().unwrap();
    assert_eq!(t.arn(), cluster_arn);
    assert_eq!(
        t.role_arn(),
        "arn:aws:iam::123456789012:role/backhaul-events"
    );
    assert_eq!(t.dead_letter_config().unwrap().arn(), Some(DLQ));
    let retry = t.retry_policy().unwrap();
    assert_eq!(retry.maximum_retry_attempts(), Some(3));
    assert_eq!(retry.maximum_event_age_in_seconds(), Some(3600));
    let ecs = t.ecs_parameters().unwrap();
    assert_eq!(
        Some(ecs.task_definition_arn()),
        s["task_definition_arn"].as_str()
    );
    assert!(!rule_exists(&name), "no UTC rule beside the schedule");

    // What was sent is what the dry run said (Name travels in the path).
    let writes = scheduler_writes(&rec);
    assert_eq!(writes.len(), 1, "{writes:?}");
    let (method, path, body) = &writes[0];
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", format!("/schedules/{name}").as_str())
    );
    let mut want = plan["requests"][1]["input"].clone();
    want.as_object_mut().unwrap().remove("Name");
    want["Target"]["Arn"] = cluster_arn.clone().into();
    want["Target"]["EcsParameters"]["TaskDefinitionArn"] = s["task_definition_arn"].clone();
    let mut sent = body.clone();
    sent.as_object_mut().unwrap().remove("ClientToken");
    assert_eq!(sent, want);

    // Same settings: nothing written.
    let again = summary(schedule(&rec, &stage).args([
        "--timezone",
        "Asia/Singapore",
        "--dead-letter-arn",
        DLQ,
    ]));
    assert_eq!(again["schedule"], "unchanged");
    assert_eq!(again["changed"], false);
    assert_eq!(scheduler_writes(&rec).len(), 1);

    // Another zone: updated in place.
    let moved = summary(schedule(&rec, &stage).args(["--timezone", "Europe/Berlin"]));
    assert_eq!(moved["schedule"], "updated");
    let got = get(&name).unwrap();
    assert_eq!(got.schedule_expression_timezone(), Some("Europe/Berlin"));
    assert!(got.target().unwrap().dead_letter_config().is_none());
    let writes = scheduler_writes(&rec);
    assert_eq!(writes.last().unwrap().0, "PUT");

    // status: the schedule and its next three runs at 03:00 Berlin time.
    let out = rec
        .backhaul()
        .args(["status", "--stage", &stage, "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let st: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(st["zoned_schedule"]["timezone"], "Europe/Berlin");
    assert!(st["rule"].is_null(), "{st}");
    let runs = st["next_runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{st}");
    for r in runs {
        let r = r.as_str().unwrap();
        assert!(r.contains("T03:00:00+0"), "{r}");
    }

    // Without a zone: back to a UTC rule, the schedule removed.
    let ruled = summary(&mut schedule(&rec, &stage));
    assert_eq!(ruled["removed_schedule"], true);
    assert!(get(&name).is_none());
    assert!(rule_exists(&name));
    let out = rec
        .backhaul()
        .args(["status", "--stage", &stage, "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let st: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(
        st["next_runs"][0]
            .as_str()
            .unwrap()
            .ends_with("T03:00:00+00:00"),
        "{st}"
    );

    // The task's own BACKUP_TIMEZONE picks the zone: the rule is replaced again.
    let zoned = summary(schedule(&rec, &stage).args(["--env", "BACKUP_TIMEZONE=Asia/Singapore"]));
    assert_eq!(zoned["schedule"], "created");
    assert_eq!(zoned["removed_rule"], true);
    assert!(!rule_exists(&name));

    let gone = summary(rec.backhaul().args(["unschedule", "--stage", &stage]));
    assert_eq!(gone["removed_schedule"], true);
    assert!(get(&name).is_none());
    rec.check(&[
        "scheduler:CreateSchedule",
        "scheduler:GetSchedule",
        "scheduler:UpdateSchedule",
        "scheduler:DeleteSchedule",
        "events:PutRule",
        "events:DeleteRule",
    ]);
}

#[test]
fn bad_time_zone_settings_exit_2_before_any_aws_call() {
    for (extra, message) in [
        (
            vec!["--timezone", "+08:00"],
            "--timezone \"+08:00\" is not an IANA time zone name",
        ),
        (
            vec!["--timezone", "Mars/Olympus"],
            "is not an IANA time zone name",
        ),
        (
            vec!["--dead-letter-arn", "arn:aws:sns:us-east-1:123456789012:t"],
            "--dead-letter-arn \"arn:aws:sns:us-east-1:123456789012:t\" is not an SQS queue ARN",
        ),
        (
            vec!["--timezone", "Asia/Singapore", "--retry-attempts", "186"],
            "--retry-attempts 186 is more than",
        ),
    ] {
        let out = crate::common::backhaul()
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .args([
                "schedule",
                "--stage",
                "dev",
                "--image",
                "i",
                "--subnets",
                "subnet-1",
                "--security-groups",
                "sg-1",
                "--execution-role-arn",
                "arn:aws:iam::123456789012:role/e",
                "--task-role-arn",
                "arn:aws:iam::123456789012:role/t",
                "--events-role-arn",
                "arn:aws:iam::123456789012:role/v",
                "--env",
                "S3_BUCKET=b",
                "--env",
                "PG_DB_HOST=h",
                "--env",
                "PG_DB_NAME=d",
                "--env",
                "PG_DB_USER=u",
            ])
            .args(&extra)
            .assert()
            .code(2)
            .get_output()
            .stderr
            .clone();
        let err = String::from_utf8(out).unwrap();
        assert!(err.contains(message), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

fn task_env(td: &aws_sdk_ecs::types::TaskDefinition) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = td.container_definitions()[0]
        .environment()
        .iter()
        .map(|kv| {
            (
                kv.name().unwrap_or_default().to_string(),
                kv.value().unwrap_or_default().to_string(),
            )
        })
        .collect();
    env.sort();
    env
}

/// Keys and schedule follow one zone: `--timezone` writes the task's BACKUP_TIMEZONE (the dry
/// run shows it, the registered task definition has it), and a different zone in the task's
/// own environment is refused naming both, before anything is sent.
#[test]
fn timezone_flag_sets_the_task_env_and_refuses_a_different_one() {
    let stage = stage("tzenv");
    let name = format!("backhaul-{stage}");
    create_cluster(&name);
    let rec = Contract::start();

    let plan = schedule(&rec, &stage)
        .args(["--timezone", "Europe/Berlin", "--dry-run"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let plan: serde_json::Value = serde_json::from_slice(&plan).unwrap();
    let env = &plan["requests"][0]["input"]["containerDefinitions"][0]["environment"];
    assert!(
        env.as_array()
            .unwrap()
            .contains(&serde_json::json!({"name": "BACKUP_TIMEZONE", "value": "Europe/Berlin"})),
        "{plan}"
    );
    assert!(rec.requests().is_empty());

    let s = summary(schedule(&rec, &stage).args(["--timezone", "Europe/Berlin"]));
    assert_eq!(s["timezone"], "Europe/Berlin");
    let td = crate::ecs::task_definition(s["task_definition_arn"].as_str().unwrap());
    let env = task_env(&td);
    assert!(
        env.contains(&("BACKUP_TIMEZONE".into(), "Europe/Berlin".into())),
        "{env:?}"
    );

    // The same zone in the task's environment: accepted, nothing new registered.
    let same = summary(schedule(&rec, &stage).args([
        "--timezone",
        "Europe/Berlin",
        "--env",
        "BACKUP_TIMEZONE=Europe/Berlin",
    ]));
    assert_eq!(same["changed"], false, "{same}");

    // A different one: exit 2 naming both, nothing sent.
    let before = rec.requests().len();
    let out = schedule(&rec, &stage)
        .args([
            "--timezone",
            "Europe/Berlin",
            "--env",
            "BACKUP_TIMEZONE=Asia/Singapore",
        ])
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(out).unwrap();
    assert!(
        err.contains("Europe/Berlin") && err.contains("Asia/Singapore"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(rec.requests().len(), before, "nothing sent");
    rec.check(&["scheduler:CreateSchedule", "scheduler:GetSchedule"]);
}
