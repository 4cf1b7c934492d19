//! What `schedule --alarm-topic-arn` creates beside the schedule, as plain values turned into
//! SDK requests and into `--dry-run` JSON:
//!
//! - a CloudWatch alarm on the `backup_success` metric the runs emit (EMF, see
//!   [`crate::report`]): it goes to ALARM when no run of the stage succeeded for the
//!   schedule's longest gap plus a grace, which is what a run that fails, or never happens,
//!   looks like from outside;
//! - an EventBridge rule on the stage's tasks stopping with a non-zero exit code or failing to
//!   start (image pull, a missing secret): those never reach backhaul, so only ECS can say so.

use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, MetricAlarm, Statistic};
use aws_sdk_eventbridge::types::{InputTransformer, Target};
use serde_json::{json, Value};

use super::names;

/// The metric every artifact line carries: 1 per artifact that succeeded, 0 per failure.
pub const METRIC: &str = "backup_success";
pub const NAMESPACE: &str = "backhaul";
/// The dimension the per-stage series is keyed by ([`crate::report`] emits `[["stage"], ...]`).
pub const DIMENSION: &str = "stage";
/// The failure rule's only target.
pub const TOPIC_TARGET_ID: &str = "backhaul-alarm-topic";
/// CloudWatch evaluates at most seven days of data (Period × EvaluationPeriods)...
pub const MAX_WINDOW: i64 = 604_800;
/// ...and at most one day when the period is shorter than an hour.
pub const MAX_WINDOW_SHORT_PERIOD: i64 = 86_400;

pub fn alarm_name(stage: &str) -> String {
    format!("{}-no-backup", names::stage_resource(stage))
}

/// `backhaul-<stage>.failed`: a '.' never appears in a stage, so this can never be another
/// stage's schedule rule (`backhaul-<stage>`).
pub fn failure_rule_name(stage: &str) -> String {
    format!("{}.failed", names::stage_resource(stage))
}

/// How CloudWatch looks at the metric: `periods` consecutive periods of `period` seconds
/// without a success raise the alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub period: i32,
    pub periods: i32,
}

impl Window {
    pub fn seconds(self) -> i64 {
        i64::from(self.period) * i64::from(self.periods)
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum WindowError {
    #[error("a CloudWatch alarm looks back at most 7 days (Period x EvaluationPeriods <= 604800 s), and the schedule's longest gap alone is {gap_secs} s: schedule backups at least weekly, or leave out --alarm-topic-arn and watch with `backhaul status --check`")]
    GapTooLong { gap_secs: i64 },
}

/// The window for "no success for `wanted` seconds", within PutMetricAlarm's limits: a
/// period that is a multiple of 60, 5-minute periods up to a day (periods under an hour may
/// look back at most a day), hourly periods up to seven days. The window is rounded up to a
/// whole period, so the alarm never fires before `wanted` has passed. When `wanted` is over
/// seven days but the schedule's own gap fits, the widest window (7 days) is used and the
/// second value says so; a gap over seven days is refused.
pub fn window(wanted: i64, gap: i64) -> Result<(Window, Option<String>), WindowError> {
    let wanted = wanted.max(60);
    if wanted <= MAX_WINDOW_SHORT_PERIOD {
        let period = if wanted < 300 { 60 } else { 300 };
        return Ok((
            Window {
                period: period as i32,
                periods: ((wanted + period - 1) / period) as i32,
            },
            None,
        ));
    }
    if wanted <= MAX_WINDOW {
        return Ok((
            Window {
                period: 3_600,
                periods: ((wanted + 3_599) / 3_600) as i32,
            },
            None,
        ));
    }
    if gap > MAX_WINDOW {
        return Err(WindowError::GapTooLong { gap_secs: gap });
    }
    Ok((
        Window {
            period: 3_600,
            periods: (MAX_WINDOW / 3_600) as i32,
        },
        Some(format!("the alarm window is cut to 7 days, the most CloudWatch allows (the schedule's longest gap plus the grace is {wanted} s): a run that finishes late may raise it briefly")),
    ))
}

/// The `no-backup` alarm.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmSpec {
    pub name: String,
    pub stage: String,
    pub topic_arn: String,
    pub window: Window,
    pub description: String,
}

impl AlarmSpec {
    pub fn new(stage: &str, topic_arn: &str, window: Window, why: &str) -> AlarmSpec {
        AlarmSpec {
            name: alarm_name(stage),
            stage: stage.to_string(),
            topic_arn: topic_arn.to_string(),
            window,
            description: format!(
                "No successful backhaul backup of stage {stage} for {} s ({why}). Look: backhaul logs --stage {stage} --runs 5; backhaul status --stage {stage} --check",
                window.seconds()
            ),
        }
    }

    /// PutMetricAlarm's input in the API's JSON spelling (dry run, contract checks).
    pub fn to_json(&self) -> Value {
        json!({
            "AlarmName": self.name,
            "AlarmDescription": self.description,
            "ActionsEnabled": true,
            "AlarmActions": [self.topic_arn],
            "OKActions": [self.topic_arn],
            "MetricName": METRIC,
            "Namespace": NAMESPACE,
            "Statistic": "Sum",
            "Dimensions": [{"Name": DIMENSION, "Value": self.stage}],
            "Period": self.window.period,
            "EvaluationPeriods": self.window.periods,
            "DatapointsToAlarm": self.window.periods,
            "Threshold": 1.0,
            "ComparisonOperator": "LessThanThreshold",
            "TreatMissingData": "breaching",
        })
    }

    pub fn put(
        &self,
        c: &aws_sdk_cloudwatch::Client,
    ) -> aws_sdk_cloudwatch::operation::put_metric_alarm::builders::PutMetricAlarmFluentBuilder
    {
        c.put_metric_alarm()
            .alarm_name(&self.name)
            .alarm_description(&self.description)
            .actions_enabled(true)
            .alarm_actions(&self.topic_arn)
            .ok_actions(&self.topic_arn)
            .metric_name(METRIC)
            .namespace(NAMESPACE)
            .statistic(Statistic::Sum)
            .dimensions(
                Dimension::builder()
                    .name(DIMENSION)
                    .value(&self.stage)
                    .build(),
            )
            .period(self.window.period)
            .evaluation_periods(self.window.periods)
            .datapoints_to_alarm(self.window.periods)
            .threshold(1.0)
            .comparison_operator(ComparisonOperator::LessThanThreshold)
            .treat_missing_data("breaching")
    }

    /// Whether an existing alarm already says exactly this (so a re-run writes nothing).
    pub fn matches(&self, a: &MetricAlarm) -> bool {
        let dims: Vec<(Option<&str>, Option<&str>)> = a
            .dimensions()
            .iter()
            .map(|d| (d.name(), d.value()))
            .collect();
        a.alarm_description() == Some(self.description.as_str())
            && a.actions_enabled() == Some(true)
            && a.alarm_actions() == [self.topic_arn.clone()]
            && a.ok_actions() == [self.topic_arn.clone()]
            && a.insufficient_data_actions().is_empty()
            && a.metric_name() == Some(METRIC)
            && a.namespace() == Some(NAMESPACE)
            && a.statistic() == Some(&Statistic::Sum)
            && a.extended_statistic().is_none()
            && dims == [(Some(DIMENSION), Some(self.stage.as_str()))]
            && a.period() == Some(self.window.period)
            && a.evaluation_periods() == Some(self.window.periods)
            && a.datapoints_to_alarm() == Some(self.window.periods)
            && a.threshold() == Some(1.0)
            && a.comparison_operator() == Some(&ComparisonOperator::LessThanThreshold)
            && a.treat_missing_data() == Some("breaching")
            && a.unit().is_none()
    }
}

/// The rule that tells the topic when one of the stage's tasks fails.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRuleSpec {
    pub name: String,
    pub stage: String,
    pub topic_arn: String,
}

impl FailureRuleSpec {
    pub fn new(stage: &str, topic_arn: &str) -> FailureRuleSpec {
        FailureRuleSpec {
            name: failure_rule_name(stage),
            stage: stage.to_string(),
            topic_arn: topic_arn.to_string(),
        }
    }

    pub fn description(&self) -> String {
        format!(
            "backhaul: tell the alarm topic when a task of stage {} fails or cannot start",
            self.stage
        )
    }

    /// Tasks of the stage's family (RunTask's default group, `family:<family>`, whether the
    /// schedule or `run-task` started them) that stopped with a container exit code other
    /// than 0, or never started (`TaskFailedToStart`: image pull, a secret it cannot read).
    pub fn event_pattern(&self) -> Value {
        json!({
            "source": ["aws.ecs"],
            "detail-type": ["ECS Task State Change"],
            "detail": {
                "lastStatus": ["STOPPED"],
                "group": [format!("family:{}", names::stage_resource(&self.stage))],
                "$or": [
                    {"containers": {"exitCode": [{"anything-but": 0}]}},
                    {"stopCode": ["TaskFailedToStart"]},
                ],
            },
        })
    }

    /// What the topic's subscribers read: stage, task, why, and the command to see its log.
    pub fn input_paths(&self) -> Value {
        json!({
            "task": "$.detail.taskArn",
            "stopCode": "$.detail.stopCode",
            "reason": "$.detail.stoppedReason",
            "exitCode": "$.detail.containers[0].exitCode",
        })
    }

    pub fn input_template(&self) -> String {
        let stage = &self.stage;
        format!(
            "\"backhaul stage {stage}: task <task> stopped (<stopCode>, exit code <exitCode>): <reason>. Its log: backhaul logs --stage {stage} --task <task>\""
        )
    }

    pub fn rule_json(&self) -> Value {
        json!({
            "Name": self.name,
            "EventPattern": self.event_pattern().to_string(),
            "State": "ENABLED",
            "Description": self.description(),
        })
    }

    pub fn target_json(&self) -> Value {
        json!({
            "Id": TOPIC_TARGET_ID,
            "Arn": self.topic_arn,
            "InputTransformer": {
                "InputPathsMap": self.input_paths(),
                "InputTemplate": self.input_template(),
            },
        })
    }

    pub fn target(&self) -> Result<Target, aws_sdk_eventbridge::error::BuildError> {
        let paths = self
            .input_paths()
            .as_object()
            .expect("paths are an object")
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().expect("paths are strings").to_string(),
                )
            })
            .collect();
        Target::builder()
            .id(TOPIC_TARGET_ID)
            .arn(&self.topic_arn)
            .input_transformer(
                InputTransformer::builder()
                    .set_input_paths_map(Some(paths))
                    .input_template(self.input_template())
                    .build()?,
            )
            .build()
    }
}

/// An SNS topic ARN: `arn:<partition>:sns:<region>:<12-digit account>:<name>`.
pub fn valid_topic_arn(arn: &str) -> bool {
    let p: Vec<&str> = arn.split(':').collect();
    p.len() == 6
        && p[0] == "arn"
        && p[1].starts_with("aws")
        && p[2] == "sns"
        && !p[3].is_empty()
        && p[4].len() == 12
        && p[4].bytes().all(|b| b.is_ascii_digit())
        && !p[5].is_empty()
        && p[5].len() <= 256
        && p[5]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_fit_put_metric_alarm() {
        // Daily with the default 2 h grace: over a day, so hourly periods.
        assert_eq!(
            window(26 * 3_600, 24 * 3_600).unwrap(),
            (
                Window {
                    period: 3_600,
                    periods: 26
                },
                None
            )
        );
        // Every six hours plus 2 h: 8 h in five-minute periods.
        assert_eq!(
            window(8 * 3_600, 6 * 3_600).unwrap().0,
            Window {
                period: 300,
                periods: 96
            }
        );
        // Rounded up to a whole period, never down.
        assert_eq!(window(8 * 3_600 + 1, 0).unwrap().0.periods, 97);
        assert_eq!(
            window(90, 60).unwrap().0,
            Window {
                period: 60,
                periods: 2
            }
        );
        // Exactly a day still uses short periods (the limit is inclusive).
        assert_eq!(
            window(86_400, 0).unwrap().0,
            Window {
                period: 300,
                periods: 288
            }
        );
        // Weekly plus grace: cut to seven days, and said.
        let (w, note) = window(7 * 86_400 + 7_200, 7 * 86_400).unwrap();
        assert_eq!(
            w,
            Window {
                period: 3_600,
                periods: 168
            }
        );
        assert!(note.unwrap().contains("cut to 7 days"));
        // Monthly: refused.
        let e = window(31 * 86_400 + 7_200, 31 * 86_400).unwrap_err();
        assert!(e.to_string().contains("at least weekly"), "{e}");
        // Every window obeys the rules.
        for wanted in (60..800_000).step_by(997) {
            if let Ok((w, _)) = window(wanted, wanted.min(MAX_WINDOW)) {
                assert_eq!(w.period % 60, 0);
                assert!(w.seconds() <= MAX_WINDOW);
                assert!(w.period >= 3_600 || w.seconds() <= MAX_WINDOW_SHORT_PERIOD);
                assert!(w.seconds() >= wanted.min(MAX_WINDOW), "{wanted}");
            }
        }
    }

    /// The alarm watches exactly what a run emits: same namespace, metric and dimension set.
    #[test]
    fn alarm_metric_is_what_the_runs_emit() {
        let r = crate::report::ArtifactReport {
            event: "artifact",
            status: "ok",
            stage: "prod".into(),
            kind: crate::layout::Kind::Postgres,
            database: "app".into(),
            key: "prod/k".into(),
            raw_bytes: None,
            stored_bytes: None,
            sha256: None,
            seconds: 1.0,
            error: None,
        };
        let line: Value = serde_json::from_str(&r.to_line()).unwrap();
        let emf = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(emf["Namespace"], NAMESPACE);
        assert!(emf["Dimensions"]
            .as_array()
            .unwrap()
            .contains(&json!([DIMENSION])));
        assert!(emf["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["Name"] == METRIC));
        assert_eq!(line[METRIC], 1);
        assert_eq!(line[DIMENSION], "prod");
    }

    #[test]
    fn names_never_collide_with_a_schedule_rule() {
        assert_eq!(alarm_name("prod"), "backhaul-prod-no-backup");
        assert_eq!(failure_rule_name("prod"), "backhaul-prod.failed");
    }

    #[test]
    fn topic_arns() {
        assert!(valid_topic_arn(
            "arn:aws:sns:us-east-1:123456789012:backhaul-alarms"
        ));
        assert!(valid_topic_arn(
            "arn:aws-us-gov:sns:us-gov-west-1:123456789012:t.fifo"
        ));
        assert!(!valid_topic_arn("arn:aws:sqs:us-east-1:123456789012:q"));
        assert!(!valid_topic_arn("arn:aws:sns:us-east-1:1234:t"));
        assert!(!valid_topic_arn("backhaul-alarms"));
    }

    #[test]
    fn template_placeholders_are_all_mapped() {
        let r = FailureRuleSpec::new("prod", "arn:aws:sns:us-east-1:123456789012:t");
        let t = r.input_template();
        let paths = r.input_paths();
        for (k, _) in paths.as_object().unwrap() {
            assert!(t.contains(&format!("<{k}>")), "{k}");
        }
        assert!(
            t.contains("backhaul logs --stage prod --task <task>"),
            "{t}"
        );
        assert!(t.starts_with('"') && t.ends_with('"'));
    }
}
