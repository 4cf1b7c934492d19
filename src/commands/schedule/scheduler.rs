//! `schedule --timezone`: the stage's schedule as an EventBridge Scheduler schedule in a time
//! zone instead of a UTC rule. A stage has one or the other: applying one kind removes the
//! other kind (after the new one is in place, so the stage is never left unscheduled), and
//! `unschedule` removes whichever exists.
//!
//! The zone is `--timezone` (or `BACKUP_TIMEZONE` in the shell), else the task's own
//! `BACKUP_TIMEZONE`, so keys and schedule follow one setting: a zone from the flag is also
//! written into the task's environment (a different one already there is refused), so a
//! schedule at 02:00 Berlin time names its keys in Berlin time too. UTC keeps the rule.

use std::str::FromStr;

use aws_sdk_scheduler::types::ScheduleState;
use serde::Serialize;
use serde_json::{json, Value};

use super::{cluster_arn, ensure_task_definition, remove_targets, target_ids, Plan, StackOutputs};
use crate::aws::events::{Network, TargetSpec};
use crate::aws::scheduler::{self, ScheduleSpec, MAX_RETRY_ATTEMPTS};
use crate::aws::{build_err, names, sdk_err, Clients};
use crate::cli::ScheduleArgs;
use crate::config::{non_empty, ConfigError};

/// How the stage is to be scheduled when it is not a UTC rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Zoned {
    pub timezone: String,
    pub retry_attempts: u32,
    pub dead_letter_arn: Option<String>,
}

fn is_utc(zone: &str) -> bool {
    matches!(
        zone.to_ascii_uppercase().as_str(),
        "UTC" | "ETC/UTC" | "Z" | "GMT" | "ETC/GMT" | "UCT" | "+00:00" | "ZULU"
    )
}

/// Decides the kind of schedule. `Ok((None, warnings))` keeps the rule.
/// With `--from-stack`, the stack's `DeadLetterQueueArn` applies unless the flag names one.
/// A zone given with `--timezone` also goes into the task's environment as `BACKUP_TIMEZONE`.
pub fn resolve(
    a: &ScheduleArgs,
    plan: &mut Plan,
    stack: &StackOutputs,
) -> Result<(Option<Zoned>, Vec<String>), ConfigError> {
    align_task_zone(a.timezone.as_deref(), &mut plan.task.env)?;
    let mut warnings = Vec::new();
    if a.retry_attempts > MAX_RETRY_ATTEMPTS {
        return Err(ConfigError::invalid(
            "--retry-attempts",
            format!(
                "{} is more than Scheduler's {MAX_RETRY_ATTEMPTS}",
                a.retry_attempts
            ),
        ));
    }
    let dlq = non_empty(a.dead_letter_arn.clone())
        .or_else(|| non_empty(stack.0.get("DeadLetterQueueArn").cloned()));
    if let Some(arn) = &dlq {
        validate_sqs_arn(arn)?;
    }
    let from_flag = non_empty(a.timezone.clone());
    let (zone, var) = match from_flag {
        Some(z) => (Some(z), "--timezone"),
        None => (
            non_empty(plan.task.env.get("BACKUP_TIMEZONE").cloned()),
            "BACKUP_TIMEZONE (task environment)",
        ),
    };
    let zone = match zone {
        Some(z) if !is_utc(&z) => match chrono_tz::Tz::from_str(&z) {
            Ok(tz) => Some(tz.name().to_string()),
            Err(_) if var == "--timezone" => {
                return Err(ConfigError::invalid(
                    "--timezone",
                    format!("\"{z}\" is not an IANA time zone name: EventBridge Scheduler takes names like Asia/Singapore or Europe/Berlin (offsets such as +08:00 are for key timestamps only)"),
                ))
            }
            Err(_) => {
                warnings.push(format!("the task's BACKUP_TIMEZONE \"{z}\" is not an IANA zone name, so the schedule stays a UTC rule: pass --timezone <Area/City> to schedule in local time"));
                None
            }
        },
        _ => None,
    };
    let timezone = match (zone, &dlq) {
        (Some(z), _) => z,
        // A dead-letter queue is a Scheduler feature: schedule in UTC with Scheduler.
        (None, Some(_)) => "UTC".to_string(),
        (None, None) => return Ok((None, warnings)),
    };
    Ok((
        Some(Zoned {
            timezone,
            retry_attempts: a.retry_attempts,
            dead_letter_arn: dlq,
        }),
        warnings,
    ))
}

/// Keys and schedule follow one zone: `--timezone Z` sets the task's `BACKUP_TIMEZONE=Z`
/// unless the task environment (`--env`, `--env-file`) already says the same zone; a
/// different zone there is refused, naming both. UTC is the keys' default, so it is not
/// written (an existing task keeps its definition), but a non-UTC task zone still conflicts.
fn align_task_zone(
    flag: Option<&str>,
    env: &mut std::collections::BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let Some(zone) = non_empty(flag.map(str::to_string)) else {
        return Ok(());
    };
    match non_empty(env.get("BACKUP_TIMEZONE").cloned()) {
        Some(task) if same_zone(&task, &zone) => Ok(()),
        Some(task) => Err(ConfigError::invalid(
            "--timezone",
            format!("\"{zone}\" differs from the task's BACKUP_TIMEZONE \"{task}\" (from --env or --env-file): keys and schedule follow one zone, so drop one of them or make them equal"),
        )),
        None if is_utc(&zone) => Ok(()),
        None => {
            env.insert("BACKUP_TIMEZONE".to_string(), zone);
            Ok(())
        }
    }
}

/// Equal spellings of one zone: UTC's many names, and IANA names in any case.
fn same_zone(a: &str, b: &str) -> bool {
    if is_utc(a) || is_utc(b) {
        return is_utc(a) && is_utc(b);
    }
    let canonical = |z: &str| {
        chrono_tz::Tz::from_str(z)
            .map(|t| t.name().to_string())
            .unwrap_or_else(|_| z.to_string())
    };
    canonical(a).eq_ignore_ascii_case(&canonical(b))
}

fn validate_sqs_arn(arn: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "sqs"
        && !parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && !parts[5].is_empty()
        && parts[5]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "--dead-letter-arn",
            format!("\"{arn}\" is not an SQS queue ARN, e.g. arn:aws:sqs:us-east-1:123456789012:backhaul-dlq"),
        ))
    }
}

fn spec(plan: &Plan, z: &Zoned, cluster_arn: String, td_arn: String) -> ScheduleSpec {
    ScheduleSpec {
        name: plan.rule.name.clone(),
        expression: plan.rule.schedule.clone(),
        timezone: z.timezone.clone(),
        description: plan.rule.description.clone(),
        target: TargetSpec {
            cluster_arn,
            task_definition_arn: td_arn,
            role_arn: plan.events_role_arn.clone(),
            platform_version: plan.platform_version.clone(),
            network: plan.network.clone(),
        },
        retry_attempts: z.retry_attempts,
        dead_letter_arn: z.dead_letter_arn.clone(),
    }
}

/// The zoned plan's requests, in the order [`apply`] sends them.
pub fn dry_run_json(plan: &Plan, z: &Zoned, task_definition: Value, cluster: String) -> Value {
    let s = spec(
        plan,
        z,
        cluster,
        format!("<{}:new or unchanged revision>", plan.task.family),
    );
    json!({
        "requests": [
            {
                "operation": "ecs:RegisterTaskDefinition",
                "when": "unless the family's latest active revision already matches",
                "input": task_definition,
            },
            {
                "operation": "scheduler:CreateSchedule",
                "when": "unless the schedule exists; scheduler:UpdateSchedule with the same input when it differs, nothing when it matches",
                "input": s.to_json(),
            },
            {
                "operation": "events:RemoveTargets",
                "when": "only if the stage has a UTC rule (it is replaced)",
                "input": {"Rule": plan.rule.name, "Ids": ["<the rule's target ids>"]},
            },
            {
                "operation": "events:DeleteRule",
                "when": "only if the stage has a UTC rule (it is replaced)",
                "input": {"Name": plan.rule.name},
            },
        ],
        "reads": [
            "ecs:DescribeClusters",
            "ecs:ListTaskDefinitions",
            "ecs:DescribeTaskDefinition",
            "scheduler:GetSchedule",
            "events:ListTargetsByRule",
        ],
    })
}

/// The request the rule path adds: the stage's Scheduler schedule, if any, is removed.
pub fn rule_dry_run_extra(plan: &Plan) -> Value {
    json!({
        "operation": "scheduler:DeleteSchedule",
        "when": "only if the stage has a time-zone schedule (it is replaced by the rule)",
        "input": {"Name": plan.rule.name},
    })
}

async fn get(
    c: &Clients,
    name: &str,
) -> anyhow::Result<Option<aws_sdk_scheduler::operation::get_schedule::GetScheduleOutput>> {
    match c.scheduler.get_schedule().name(name).send().await {
        Ok(o) => Ok(Some(o)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(sdk_err("scheduler:GetSchedule", e)),
    }
}

/// Registers the task definition if needed, creates or updates the schedule (or leaves it
/// when it already matches), then removes the stage's UTC rule.
pub async fn apply(c: &Clients, plan: &Plan, z: &Zoned) -> anyhow::Result<Value> {
    let cluster = cluster_arn(&c.ecs, &plan.cluster).await?;
    let (td, td_changed) = ensure_task_definition(&c.ecs, &plan.task).await?;
    let td_arn = td.task_definition_arn().unwrap_or_default().to_string();
    let s = spec(plan, z, cluster, td_arn.clone());
    let window = ScheduleSpec::flexible_time_window().map_err(build_err)?;
    let target = s.target().map_err(build_err)?;
    // CreateSchedule and UpdateSchedule take the same fields (their builders are distinct
    // types): one list, so the two can never drift apart.
    macro_rules! with_schedule {
        ($builder:expr) => {
            $builder
                .name(&s.name)
                .schedule_expression(&s.expression)
                .schedule_expression_timezone(&s.timezone)
                .flexible_time_window(window)
                .state(ScheduleState::Enabled)
                .description(&s.description)
                .target(target)
        };
    }
    let (action, arn) = match get(c, &s.name).await? {
        Some(existing) if scheduler::observed(&existing) == s.to_json() => {
            ("unchanged", existing.arn().unwrap_or_default().to_string())
        }
        Some(_) => {
            let out = with_schedule!(c.scheduler.update_schedule())
                .send()
                .await
                .map_err(|e| sdk_err("scheduler:UpdateSchedule", e))?;
            ("updated", out.schedule_arn().to_string())
        }
        None => {
            let out = with_schedule!(c.scheduler.create_schedule())
                .send()
                .await
                .map_err(|e| sdk_err("scheduler:CreateSchedule", e))?;
            ("created", out.schedule_arn().to_string())
        }
    };
    let removed_rule = remove_rule(c, &plan.rule.name).await?;
    Ok(json!({
        "schedule_arn": arn,
        "timezone": s.timezone,
        "schedule": action,
        "task_definition_arn": td_arn,
        "revision": td.revision(),
        "changed": td_changed || action != "unchanged" || removed_rule,
        "removed_rule": removed_rule,
    }))
}

/// Removes the stage's rule and its targets; false when there was none.
pub async fn remove_rule(c: &Clients, rule: &str) -> anyhow::Result<bool> {
    match c.events.describe_rule().name(rule).send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            return Ok(false)
        }
        Err(e) => return Err(sdk_err("events:DescribeRule", e)),
    }
    let ids = target_ids(c, rule).await?;
    remove_targets(c, rule, ids).await?;
    match c.events.delete_rule().name(rule).send().await {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(sdk_err("events:DeleteRule", e)),
    }
}

/// Deletes the stage's Scheduler schedule; false when there was none. Without permission to
/// look (credentials that only ever managed rules), a warning instead of a failure: the rule
/// path must keep working for them.
pub async fn remove_schedule(c: &Clients, stage: &str) -> anyhow::Result<bool> {
    let name = names::stage_resource(stage);
    match c.scheduler.delete_schedule().name(&name).send().await {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(false)
        }
        Err(e) => {
            let err = crate::aws::error::from_sdk("scheduler:DeleteSchedule", &e);
            if err.code.starts_with("AccessDenied") {
                tracing::warn!("cannot remove a time-zone schedule {name}, if one exists ({err}): it would keep running too");
                Ok(false)
            } else {
                Err(err.into())
            }
        }
    }
}

/// What `status` shows of a Scheduler schedule.
#[derive(Debug, Serialize)]
pub struct ZonedStatus {
    pub name: String,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub state: Option<String>,
    pub dead_letter_arn: Option<String>,
    #[serde(skip)]
    pub network: Option<(String, Network)>,
}

pub async fn status(c: &Clients, stage: &str) -> anyhow::Result<Option<ZonedStatus>> {
    let name = names::stage_resource(stage);
    let out = match get(c, &name).await {
        Ok(o) => o,
        Err(e) if e.to_string().contains(": AccessDenied") => {
            tracing::warn!("{e:#}");
            None
        }
        Err(e) => return Err(e),
    };
    Ok(out.map(|o| ZonedStatus {
        name,
        schedule: o.schedule_expression().map(str::to_string),
        timezone: o.schedule_expression_timezone().map(str::to_string),
        state: o.state().map(|s| s.as_str().to_string()),
        dead_letter_arn: o
            .target()
            .and_then(|t| t.dead_letter_config())
            .and_then(|d| d.arn())
            .map(str::to_string),
        network: o.target().and_then(scheduler::network_of),
    }))
}

/// The next `n` runs of `expr` in `zone` (UTC when `None`), as RFC 3339 with the zone's
/// offset; empty for rate expressions and unknown zones.
pub fn next_runs(expr: Option<&str>, zone: Option<&str>, n: usize) -> Vec<String> {
    let Some(expr) = expr.and_then(|e| crate::schedule_expr::parse(e).ok()) else {
        return Vec::new();
    };
    let Ok(tz) = chrono_tz::Tz::from_str(zone.unwrap_or("UTC")) else {
        return Vec::new();
    };
    crate::schedule_expr::next_runs(&expr, &tz, chrono::Utc::now(), n)
        .iter()
        .map(|t| t.to_rfc3339())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_spellings_keep_the_rule() {
        for z in ["UTC", "utc", "Etc/UTC", "Z", "+00:00"] {
            assert!(is_utc(z), "{z}");
        }
        assert!(!is_utc("Europe/London"));
    }

    #[test]
    fn flag_zone_goes_into_the_task_env_unless_it_conflicts() {
        let mut env = std::collections::BTreeMap::new();
        align_task_zone(Some("Europe/Berlin"), &mut env).unwrap();
        assert_eq!(env["BACKUP_TIMEZONE"], "Europe/Berlin");
        align_task_zone(Some("europe/berlin"), &mut env).unwrap();
        assert_eq!(env["BACKUP_TIMEZONE"], "Europe/Berlin");
        let e = align_task_zone(Some("Asia/Singapore"), &mut env).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("--timezone ")
                && text.contains("Asia/Singapore")
                && text.contains("Europe/Berlin"),
            "{text}"
        );
        let mut env = std::collections::BTreeMap::new();
        align_task_zone(Some("UTC"), &mut env).unwrap();
        assert!(env.is_empty(), "UTC is the keys' default: not written");
        env.insert("BACKUP_TIMEZONE".into(), "Etc/UTC".into());
        align_task_zone(Some("utc"), &mut env).unwrap();
        env.insert("BACKUP_TIMEZONE".into(), "+08:00".into());
        assert!(align_task_zone(Some("UTC"), &mut env).is_err());
        align_task_zone(None, &mut env).unwrap();
    }

    #[test]
    fn dead_letter_arns() {
        assert!(validate_sqs_arn("arn:aws:sqs:us-east-1:123456789012:backhaul-dlq").is_ok());
        assert!(validate_sqs_arn("arn:aws:sqs:us-east-1:123456789012:q.fifo").is_err());
        let e = validate_sqs_arn("arn:aws:sns:us-east-1:123456789012:topic").unwrap_err();
        assert!(e.to_string().starts_with("--dead-letter-arn "), "{e}");
    }

    #[test]
    fn next_runs_for_status() {
        assert_eq!(
            next_runs(Some("cron(0 2 * * ? *)"), Some("Asia/Singapore"), 3).len(),
            3
        );
        assert!(next_runs(Some("rate(1 day)"), None, 3).is_empty());
        assert!(next_runs(Some("cron(0 2 * * ? *)"), None, 3)[0].ends_with("+00:00"));
    }
}
