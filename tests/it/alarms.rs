//! `schedule --alarm-topic-arn`: the no-backup alarm and the task-failure rule against moto,
//! inspected with the real SDK (DescribeAlarms, DescribeRule, ListTargetsByRule); every
//! request through the contract checker.

use serde_json::{json, Value};

use crate::common::contract::{check_records, json_request, Contract};
use crate::common::{block_on, moto};
use crate::ecs::{create_cluster, events, network, py, schedule, stage, summary};

fn cloudwatch() -> aws_sdk_cloudwatch::Client {
    aws_sdk_cloudwatch::Client::new(&moto().sdk_config())
}

fn topic(stage: &str) -> String {
    py(&format!(
        "print(client('sns').create_topic(Name='alarms-{stage}')['TopicArn'])"
    ))
}

fn alarms(name: &str) -> Vec<aws_sdk_cloudwatch::types::MetricAlarm> {
    block_on(cloudwatch().describe_alarms().alarm_names(name).send())
        .unwrap()
        .metric_alarms()
        .to_vec()
}

/// `schedule --dry-run` of `stage` on `expr`, every other required flag given.
fn plan(rec: &Contract, stage: &str, expr: &str) -> assert_cmd::Command {
    let (subnets, sg) = network();
    let role = |n: &str| format!("arn:aws:iam::123456789012:role/backhaul-{n}");
    let mut cmd = rec.backhaul();
    cmd.args([
        "schedule",
        "--dry-run",
        "--stage",
        stage,
        "--schedule",
        expr,
    ])
    .args([
        "--image",
        "backhaul:test",
        "--subnets",
        subnets,
        "--security-groups",
        sg,
    ])
    .args([
        "--execution-role-arn",
        &role("exec"),
        "--task-role-arn",
        &role("task"),
    ])
    .args([
        "--events-role-arn",
        &role("events"),
        "--env",
        "S3_BUCKET=acme",
        "--secret",
        "POSTGRES_SECRET=arn:aws:secretsmanager:us-east-1:123456789012:secret:dev/db-AbCdEf",
    ]);
    cmd
}

/// Requests recorded for one CloudWatch operation (rpc-v2-cbor: named in the path).
fn cloudwatch_calls(rec: &Contract, op: &str) -> usize {
    rec.requests()
        .iter()
        .filter(|r| r.target.ends_with(&format!("/operation/{op}")))
        .count()
}

#[test]
fn schedule_creates_alarm_and_failure_rule_and_unschedule_removes_them() {
    let stage = stage("alarm");
    let family = format!("backhaul-{stage}");
    create_cluster(&family);
    let topic = topic(&stage);
    let rec = Contract::start();
    let s = summary(schedule(&rec, &stage).args(["--alarm-topic-arn", &topic]));
    let alarm_name = format!("backhaul-{stage}-no-backup");
    assert_eq!(s["alarms"]["alarm"], alarm_name.as_str());
    assert_eq!(s["alarms"]["alarm_changed"], true);
    // cron(0 3 * * ? *): a day between runs, plus the default 2 h grace.
    assert_eq!(s["alarms"]["alarm_window_seconds"], 26 * 3_600);

    let [a] = &alarms(&alarm_name)[..] else {
        panic!("one alarm")
    };
    assert_eq!(a.metric_name(), Some("backup_success"));
    assert_eq!(a.namespace(), Some("backhaul"));
    let dims: Vec<(&str, &str)> = a
        .dimensions()
        .iter()
        .map(|d| (d.name().unwrap(), d.value().unwrap()))
        .collect();
    assert_eq!(dims, [("stage", stage.as_str())]);
    assert_eq!(a.statistic().map(|s| s.as_str()), Some("Sum"));
    assert_eq!(a.treat_missing_data(), Some("breaching"));
    assert_eq!(
        a.comparison_operator().map(|c| c.as_str()),
        Some("LessThanThreshold")
    );
    assert_eq!(a.threshold(), Some(1.0));
    assert_eq!(
        (a.period(), a.evaluation_periods(), a.datapoints_to_alarm()),
        (Some(3_600), Some(26), Some(26))
    );
    assert_eq!(a.alarm_actions(), std::slice::from_ref(&topic));
    assert_eq!(a.ok_actions(), std::slice::from_ref(&topic));
    assert_eq!(a.actions_enabled(), Some(true));
    assert!(
        a.alarm_description()
            .unwrap()
            .contains(&format!("backhaul logs --stage {stage} --runs 5")),
        "{a:?}"
    );

    let rule_name = format!("backhaul-{stage}.failed");
    let rule = block_on(events().describe_rule().name(&rule_name).send()).unwrap();
    assert_eq!(rule.state().map(|s| s.as_str()), Some("ENABLED"));
    let pattern: Value = serde_json::from_str(rule.event_pattern().unwrap()).unwrap();
    assert_eq!(
        pattern,
        json!({
            "source": ["aws.ecs"],
            "detail-type": ["ECS Task State Change"],
            "detail": {
                "lastStatus": ["STOPPED"],
                "group": [format!("family:{family}")],
                "$or": [
                    {"containers": {"exitCode": [{"anything-but": 0}]}},
                    {"stopCode": ["TaskFailedToStart"]},
                ],
            },
        })
    );
    let targets = block_on(events().list_targets_by_rule().rule(&rule_name).send())
        .unwrap()
        .targets()
        .to_vec();
    let [t] = &targets[..] else {
        panic!("one target: {targets:?}")
    };
    assert_eq!(t.id(), "backhaul-alarm-topic");
    assert_eq!(t.arn(), topic);
    let it = t.input_transformer().unwrap();
    let paths = it.input_paths_map().unwrap();
    assert_eq!(paths["task"], "$.detail.taskArn");
    assert_eq!(paths["reason"], "$.detail.stoppedReason");
    assert_eq!(
        it.input_template(),
        format!("\"backhaul stage {stage}: task <task> stopped (<stopCode>, exit code <exitCode>): <reason>. Its log: backhaul logs --stage {stage} --task <task>\"")
    );

    // A second run changes nothing: the alarm is not rewritten, the rule keeps one target.
    let s = summary(schedule(&rec, &stage).args(["--alarm-topic-arn", &topic]));
    assert_eq!(s["changed"], false, "{s}");
    assert_eq!(s["alarms"]["alarm_changed"], false, "{s}");
    assert_eq!(alarms(&alarm_name), std::slice::from_ref(a));
    assert_eq!(cloudwatch_calls(&rec, "PutMetricAlarm"), 1);
    let again = block_on(events().list_targets_by_rule().rule(&rule_name).send()).unwrap();
    assert_eq!(again.targets(), &targets[..]);

    // status shows the alarm's state.
    let out = rec
        .backhaul()
        .args(["status", "--stage", &stage, "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let st: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(st["alarm"]["name"], alarm_name.as_str());
    assert_eq!(
        st["alarm"]["state"],
        a.state_value().unwrap().as_str(),
        "{st}"
    );
    assert_eq!(st["alarm"]["window_seconds"], 26 * 3_600);
    assert_eq!(st["alarm"]["failure_rule"], "ENABLED");
    let out = rec
        .backhaul()
        .args(["status", "--stage", &stage])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains(&format!(
            "alarm: {alarm_name} {}",
            a.state_value().unwrap().as_str()
        )),
        "{text}"
    );

    // unschedule removes both, and can repeat.
    let unschedule = || summary(rec.backhaul().args(["unschedule", "--stage", &stage]));
    let u = unschedule();
    assert_eq!(
        (&u["removed_alarm"], &u["removed_failure_rule"]),
        (&json!(true), &json!(true)),
        "{u}"
    );
    assert!(alarms(&alarm_name).is_empty());
    let gone = block_on(events().describe_rule().name(&rule_name).send()).unwrap_err();
    assert!(gone
        .as_service_error()
        .is_some_and(|e| e.is_resource_not_found_exception()));
    let u = unschedule();
    assert_eq!(
        (&u["removed_alarm"], &u["removed_failure_rule"]),
        (&json!(false), &json!(false)),
        "{u}"
    );
    rec.check(&[
        "cloudwatch:DescribeAlarms",
        "cloudwatch:PutMetricAlarm",
        "cloudwatch:DeleteAlarms",
        "events:PutRule",
        "events:PutTargets",
        "events:RemoveTargets",
        "events:DeleteRule",
    ]);
}

#[test]
fn dry_run_shows_the_alarm_requests_and_sends_nothing() {
    let stage = stage("alarmdry");
    let topic = format!("arn:aws:sns:us-east-1:123456789012:alarms-{stage}");
    let rec = Contract::start();
    let out = plan(&rec, &stage, "rate(6 hours)")
        .args(["--alarm-topic-arn", &topic, "--alarm-grace", "90m"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    let requests = doc["requests"].as_array().unwrap();
    let find = |op: &str, name: &str| {
        requests
            .iter()
            .find(|r| {
                r["operation"] == op
                    && (r["input"]["AlarmName"] == name
                        || r["input"]["Name"] == name
                        || r["input"]["Rule"] == name)
            })
            .unwrap_or_else(|| panic!("{op} {name} in {doc}"))["input"]
            .clone()
    };
    let alarm = find(
        "cloudwatch:PutMetricAlarm",
        &format!("backhaul-{stage}-no-backup"),
    );
    // 6 h + 90 min = 7.5 h: under a day, so five-minute periods.
    assert_eq!(
        (&alarm["Period"], &alarm["EvaluationPeriods"]),
        (&json!(300), &json!(90))
    );
    assert_eq!(alarm["AlarmActions"], json!([topic]));
    let rule_name = format!("backhaul-{stage}.failed");
    let rule = find("events:PutRule", &rule_name);
    let targets = find("events:PutTargets", &rule_name);
    assert_eq!(targets["Targets"][0]["Arn"], topic.as_str());
    check_records(
        &[
            json_request("GraniteServiceVersion20100801.PutMetricAlarm", &alarm),
            json_request("AWSEvents.PutRule", &rule),
            json_request("AWSEvents.PutTargets", &targets),
        ],
        &[
            "cloudwatch:PutMetricAlarm",
            "events:PutRule",
            "events:PutTargets",
        ],
    );
    assert!(rec.requests().is_empty(), "{:?}", rec.requests());

    // Weekly: the gap plus the grace is over CloudWatch's 7 days; the widest window is used
    // and the output says so.
    let out = plan(&rec, &stage, "rate(7 days)")
        .args(["--alarm-topic-arn", &topic])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    let alarm = doc["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["operation"] == "cloudwatch:PutMetricAlarm")
        .unwrap()["input"]
        .clone();
    assert_eq!(
        (&alarm["Period"], &alarm["EvaluationPeriods"]),
        (&json!(3_600), &json!(168))
    );
    assert!(
        doc["warnings"][0]
            .as_str()
            .unwrap()
            .contains("cut to 7 days"),
        "{doc}"
    );

    // Monthly cannot be watched by an alarm: refused before any request, naming why.
    let out = plan(&rec, &stage, "cron(0 3 1 * ? *)")
        .args(["--alarm-topic-arn", &topic])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error: --alarm-topic-arn ") && err.contains("at most 7 days"),
        "{err}"
    );
    // Not a topic ARN: refused too.
    let out = plan(&rec, &stage, "rate(1 day)")
        .args(["--alarm-topic-arn", "backhaul-alarms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(rec.requests().is_empty(), "{:?}", rec.requests());
}
