//! `schedule --alarm-topic-arn`: the no-backup alarm and the task-failure rule beside the
//! schedule (see [`crate::aws::alarms`] for what each catches); `unschedule` removes them and
//! `status` shows the alarm's state.

use serde::Serialize;
use serde_json::{json, Value};

use super::{Plan, StackOutputs};
use crate::aws::alarms::{failure_rule_name, window, AlarmSpec, FailureRuleSpec, TOPIC_TARGET_ID};
use crate::aws::{build_err, names, sdk_err, Clients};
use crate::cli::ScheduleArgs;
use crate::commands::common::parse_duration;
use crate::config::{non_empty, ConfigError};

/// Everything `schedule` creates for alarms, validated.
#[derive(Debug, Clone)]
pub struct AlarmPlan {
    pub alarm: AlarmSpec,
    pub rule: FailureRuleSpec,
    /// Said when the window had to be narrowed to fit CloudWatch's limits.
    pub note: Option<String>,
}

/// `None` when no topic is given (flag, `ALARM_TOPIC_ARN` or the stack's `AlarmTopicArn`).
/// `zone` is the time zone the schedule runs in (`None`: a UTC rule).
pub fn resolve(
    a: &ScheduleArgs,
    stack: &StackOutputs,
    plan: &Plan,
    zone: Option<&str>,
) -> Result<Option<AlarmPlan>, ConfigError> {
    let Some(topic) = non_empty(a.alarm_topic_arn.clone()).or_else(|| stack.get("AlarmTopicArn"))
    else {
        return Ok(None);
    };
    if !crate::aws::alarms::valid_topic_arn(&topic) {
        return Err(ConfigError::invalid(
            "--alarm-topic-arn",
            format!(
                "{} is not an SNS topic ARN, e.g. arn:aws:sns:us-east-1:123456789012:backhaul-alarms",
                crate::config::quoted(&topic)
            ),
        ));
    }
    let stage = &plan.task.stage;
    let rule = failure_rule_name(stage);
    if rule.len() > names::MAX_RULE_NAME {
        return Err(ConfigError::invalid(
            "--stage",
            format!("{stage} is too long for alarms: the failure rule {rule} must fit EventBridge's {} characters", names::MAX_RULE_NAME),
        ));
    }
    let grace = chrono::Duration::from_std(parse_duration(&a.alarm_grace, "--alarm-grace")?)
        .map_err(|_| ConfigError::invalid("--alarm-grace", "is too long"))?;
    let expr = &plan.rule.schedule;
    let allowance = from_schedule(expr, zone, grace).ok_or_else(|| {
        ConfigError::invalid(
            "--alarm-topic-arn",
            format!(
                "needs a schedule that runs at least twice, and {expr} does not within four years"
            ),
        )
    })?;
    let wanted = allowance.max_age.num_seconds();
    let (w, note) = window(wanted, wanted - grace.num_seconds())
        .map_err(|e| ConfigError::invalid("--alarm-topic-arn", e.to_string()))?;
    Ok(Some(AlarmPlan {
        alarm: AlarmSpec::new(stage, &topic, w, &allowance.why),
        rule: FailureRuleSpec::new(stage, &topic),
        note,
    }))
}

/// The alarm requests, in the order [`apply`] sends them, for `schedule --dry-run`.
pub fn dry_run_requests(p: &AlarmPlan) -> Vec<Value> {
    vec![
        json!({
            "operation": "cloudwatch:PutMetricAlarm",
            "when": "unless the alarm already says exactly this",
            "input": p.alarm.to_json(),
        }),
        json!({"operation": "events:PutRule", "input": p.rule.rule_json()}),
        json!({
            "operation": "events:PutTargets",
            "input": {"Rule": p.rule.name, "Targets": [p.rule.target_json()]},
        }),
        json!({
            "operation": "events:RemoveTargets",
            "when": "only for targets other than the topic (id backhaul-alarm-topic)",
            "input": {"Rule": p.rule.name, "Ids": ["<other target ids>"]},
        }),
    ]
}

/// Puts the alarm (unless it already matches) and the failure rule with its one target.
pub async fn apply(c: &Clients, p: &AlarmPlan) -> anyhow::Result<Value> {
    let existing = describe(c, &p.alarm.name).await?;
    let alarm_changed = !existing.as_ref().is_some_and(|a| p.alarm.matches(a));
    if alarm_changed {
        p.alarm
            .put(&c.cloudwatch)
            .send()
            .await
            .map_err(|e| sdk_err("cloudwatch:PutMetricAlarm", e))?;
    }
    let rule_arn = c
        .events
        .put_rule()
        .name(&p.rule.name)
        .event_pattern(p.rule.event_pattern().to_string())
        .state(aws_sdk_eventbridge::types::RuleState::Enabled)
        .description(p.rule.description())
        .send()
        .await
        .map_err(|e| sdk_err("events:PutRule", e))?
        .rule_arn()
        .unwrap_or_default()
        .to_string();
    let out = c
        .events
        .put_targets()
        .rule(&p.rule.name)
        .targets(p.rule.target().map_err(build_err)?)
        .send()
        .await
        .map_err(|e| sdk_err("events:PutTargets", e))?;
    super::failed_entries("events:PutTargets", out.failed_entries())?;
    let others: Vec<String> = super::target_ids(c, &p.rule.name)
        .await?
        .into_iter()
        .filter(|id| id != TOPIC_TARGET_ID)
        .collect();
    super::remove_targets(c, &p.rule.name, others).await?;
    Ok(json!({
        "alarm": p.alarm.name,
        "alarm_window_seconds": p.alarm.window.seconds(),
        "alarm_changed": alarm_changed,
        "failure_rule_arn": rule_arn,
    }))
}

async fn describe(
    c: &Clients,
    name: &str,
) -> anyhow::Result<Option<aws_sdk_cloudwatch::types::MetricAlarm>> {
    let out = c
        .cloudwatch
        .describe_alarms()
        .alarm_names(name)
        .send()
        .await
        .map_err(|e| sdk_err("cloudwatch:DescribeAlarms", e))?;
    Ok(out
        .metric_alarms()
        .iter()
        .find(|a| a.alarm_name() == Some(name))
        .cloned())
}

/// Removes the stage's alarm and failure rule if they exist; returns which existed.
pub async fn remove(c: &Clients, stage: &str) -> anyhow::Result<(bool, bool)> {
    let alarm = crate::aws::alarms::alarm_name(stage);
    // Stages scheduled without alarms need not grant CloudWatch to whoever unschedules them.
    let had_alarm = match describe(c, &alarm).await {
        Ok(a) => a.is_some(),
        Err(e) if e.to_string().contains(": AccessDenied") => {
            tracing::warn!(
                "cannot check for the alarm {alarm}, if one exists ({e:#}): it would keep raising"
            );
            false
        }
        Err(e) => return Err(e),
    };
    if had_alarm {
        c.cloudwatch
            .delete_alarms()
            .alarm_names(&alarm)
            .send()
            .await
            .map_err(|e| sdk_err("cloudwatch:DeleteAlarms", e))?;
    }
    let rule = failure_rule_name(stage);
    let had_rule = match c.events.describe_rule().name(&rule).send().await {
        Ok(_) => true,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            false
        }
        Err(e) => return Err(sdk_err("events:DescribeRule", e)),
    };
    if had_rule {
        let ids = super::target_ids(c, &rule).await?;
        super::remove_targets(c, &rule, ids).await?;
        c.events
            .delete_rule()
            .name(&rule)
            .send()
            .await
            .map_err(|e| sdk_err("events:DeleteRule", e))?;
    }
    Ok((had_alarm, had_rule))
}

/// What `status` shows of the alarm and the failure rule.
#[derive(Debug, Serialize)]
pub struct AlarmStatus {
    pub name: String,
    pub state: Option<String>,
    pub reason: Option<String>,
    pub window_seconds: Option<i64>,
    pub topic_arn: Option<String>,
    /// The failure rule's state (ENABLED), when it exists.
    pub failure_rule: Option<String>,
}

/// `None` when the stage has no alarm; an identity without cloudwatch:DescribeAlarms gets a
/// warning, not a failed `status`.
pub async fn status(c: &Clients, stage: &str) -> anyhow::Result<Option<AlarmStatus>> {
    let name = crate::aws::alarms::alarm_name(stage);
    let alarm = match describe(c, &name).await {
        Ok(a) => a,
        Err(e) if e.to_string().contains(": AccessDenied") => {
            tracing::warn!("{e:#}");
            None
        }
        Err(e) => return Err(e),
    };
    let Some(a) = alarm else {
        return Ok(None);
    };
    let failure_rule = c
        .events
        .describe_rule()
        .name(failure_rule_name(stage))
        .send()
        .await
        .ok()
        .and_then(|r| r.state().map(|s| s.as_str().to_string()));
    Ok(Some(AlarmStatus {
        name,
        state: a.state_value().map(|s| s.as_str().to_string()),
        reason: a.state_reason().map(str::to_string),
        window_seconds: a
            .period()
            .zip(a.evaluation_periods())
            .map(|(p, n)| i64::from(p) * i64::from(n)),
        topic_arn: a.alarm_actions().first().cloned(),
        failure_rule,
    }))
}
/// How old the newest good backup of a database may be, and where that came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowance {
    pub max_age: chrono::Duration,
    /// For the lines: `--max-age 26h` or `schedule cron(0 3 * * ? *) (longest gap 1day) + grace 2h`.
    pub why: String,
}

/// The allowance for a schedule expression (in `zone`, UTC when `None`): its longest gap
/// plus `grace`. `None` when the expression cannot be read or runs fewer than twice.
pub fn from_schedule(expr: &str, zone: Option<&str>, grace: chrono::Duration) -> Option<Allowance> {
    let parsed = crate::schedule_expr::parse(expr).ok()?;
    let tz = zone.unwrap_or("UTC").parse::<chrono_tz::Tz>().ok()?;
    let gap = crate::schedule_expr::longest_gap(&parsed, &tz, chrono::Utc::now())?;
    let in_zone = zone.map(|z| format!(" in {z}")).unwrap_or_default();
    Some(Allowance {
        max_age: gap + grace,
        why: format!(
            "schedule {expr}{in_zone}: longest gap {} + grace {}",
            human(gap),
            human(grace)
        ),
    })
}

/// `1day 2h 5m`: to the minute, which is all a backup's age needs.
pub fn human(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0) as u64;
    if secs < 60 {
        return format!("{secs}s");
    }
    humantime::format_duration(std::time::Duration::from_secs(secs / 60 * 60)).to_string()
}
