//! The EventBridge Scheduler schedule that runs a stage in its own time zone, as a plain value
//! turned into SDK types, into `--dry-run` JSON, and compared with what GetSchedule returns.
//!
//! Why Scheduler and not a rule: rules evaluate cron in UTC only, so a 02:00 local backup
//! drifts by an hour across daylight-saving changes. Scheduler takes
//! `ScheduleExpressionTimezone` and keeps the wall-clock time.

use aws_sdk_scheduler::operation::get_schedule::GetScheduleOutput;
use aws_sdk_scheduler::types::{
    AssignPublicIp, AwsVpcConfiguration, DeadLetterConfig, EcsParameters, FlexibleTimeWindow,
    FlexibleTimeWindowMode, LaunchType, NetworkConfiguration, RetryPolicy, Target,
};
use serde_json::{json, Value};

use super::events::{Network, TargetSpec};

/// A run that could not be started within this long waits for the next scheduled time
/// rather than starting a nightly backup in the middle of the working day.
pub const MAX_EVENT_AGE_SECONDS: i32 = 3600;

/// Scheduler's limit on `MaximumRetryAttempts`.
pub const MAX_RETRY_ATTEMPTS: u32 = 185;

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    pub name: String,
    /// Canonical form from `schedule_expr`.
    pub expression: String,
    /// IANA name.
    pub timezone: String,
    pub description: String,
    /// Cluster, task definition, role (the scheduler's) and network, as for a rule.
    pub target: TargetSpec,
    pub retry_attempts: u32,
    pub dead_letter_arn: Option<String>,
}

pub type BuildError = aws_sdk_scheduler::error::BuildError;

impl ScheduleSpec {
    pub fn target(&self) -> Result<Target, BuildError> {
        let t = &self.target;
        let vpc = AwsVpcConfiguration::builder()
            .set_subnets(Some(t.network.subnets.clone()))
            .set_security_groups(Some(t.network.security_groups.clone()))
            .assign_public_ip(AssignPublicIp::from(t.network.assign_public_ip_str()))
            .build()?;
        let ecs = EcsParameters::builder()
            .task_definition_arn(&t.task_definition_arn)
            .task_count(1)
            .launch_type(LaunchType::Fargate)
            .platform_version(&t.platform_version)
            .network_configuration(
                NetworkConfiguration::builder()
                    .awsvpc_configuration(vpc)
                    .build(),
            )
            .build()?;
        Target::builder()
            .arn(&t.cluster_arn)
            .role_arn(&t.role_arn)
            .ecs_parameters(ecs)
            .retry_policy(
                RetryPolicy::builder()
                    .maximum_event_age_in_seconds(MAX_EVENT_AGE_SECONDS)
                    .maximum_retry_attempts(self.retry_attempts as i32)
                    .build(),
            )
            .set_dead_letter_config(
                self.dead_letter_arn
                    .as_ref()
                    .map(|a| DeadLetterConfig::builder().arn(a).build()),
            )
            .build()
    }

    pub fn flexible_time_window() -> Result<FlexibleTimeWindow, BuildError> {
        FlexibleTimeWindow::builder()
            .mode(FlexibleTimeWindowMode::Off)
            .build()
    }

    /// The CreateSchedule (and UpdateSchedule) input in the API's JSON spelling.
    pub fn to_json(&self) -> Value {
        let t = &self.target;
        let mut target = json!({
            "Arn": t.cluster_arn,
            "RoleArn": t.role_arn,
            "RetryPolicy": {
                "MaximumEventAgeInSeconds": MAX_EVENT_AGE_SECONDS,
                "MaximumRetryAttempts": self.retry_attempts,
            },
            "EcsParameters": {
                "TaskDefinitionArn": t.task_definition_arn,
                "TaskCount": 1,
                "LaunchType": "FARGATE",
                "PlatformVersion": t.platform_version,
                "NetworkConfiguration": {"awsvpcConfiguration": {
                    "Subnets": t.network.subnets,
                    "SecurityGroups": t.network.security_groups,
                    "AssignPublicIp": t.network.assign_public_ip_str(),
                }},
            },
        });
        if let Some(dlq) = &self.dead_letter_arn {
            target["DeadLetterConfig"] = json!({ "Arn": dlq });
        }
        json!({
            "Name": self.name,
            "ScheduleExpression": self.expression,
            "ScheduleExpressionTimezone": self.timezone,
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "State": "ENABLED",
            "Description": self.description,
            "Target": target,
        })
    }
}

/// An existing schedule in the layout of [`ScheduleSpec::to_json`], so "already as wanted"
/// is one comparison of everything we set.
pub fn observed(out: &GetScheduleOutput) -> Value {
    let target = out.target().map(|t| {
        let ecs = t.ecs_parameters();
        let vpc = ecs
            .and_then(|e| e.network_configuration())
            .and_then(|n| n.awsvpc_configuration());
        let retry = t.retry_policy();
        let mut v = json!({
            "Arn": t.arn(),
            "RoleArn": t.role_arn(),
            "RetryPolicy": {
                "MaximumEventAgeInSeconds": retry.and_then(|r| r.maximum_event_age_in_seconds()),
                "MaximumRetryAttempts": retry.and_then(|r| r.maximum_retry_attempts()),
            },
            "EcsParameters": {
                "TaskDefinitionArn": ecs.map(|e| e.task_definition_arn()),
                "TaskCount": ecs.and_then(|e| e.task_count()),
                "LaunchType": ecs.and_then(|e| e.launch_type()).map(|l| l.as_str()),
                "PlatformVersion": ecs.and_then(|e| e.platform_version()),
                "NetworkConfiguration": {"awsvpcConfiguration": {
                    "Subnets": vpc.map(|v| v.subnets()),
                    "SecurityGroups": vpc.map(|v| v.security_groups()),
                    "AssignPublicIp": vpc.and_then(|v| v.assign_public_ip()).map(|a| a.as_str()),
                }},
            },
        });
        if let Some(d) = t.dead_letter_config() {
            v["DeadLetterConfig"] = json!({ "Arn": d.arn() });
        }
        v
    });
    json!({
        "Name": out.name(),
        "ScheduleExpression": out.schedule_expression(),
        "ScheduleExpressionTimezone": out.schedule_expression_timezone(),
        "FlexibleTimeWindow": {"Mode": out.flexible_time_window().map(|f| f.mode().as_str())},
        "State": out.state().map(|s| s.as_str()),
        "Description": out.description(),
        "Target": target,
    })
}

/// Where the schedule's task runs, read back (for `run-task` and `status`).
pub fn network_of(t: &Target) -> Option<(String, Network)> {
    let vpc = t
        .ecs_parameters()?
        .network_configuration()?
        .awsvpc_configuration()?;
    Some((
        t.arn().to_string(),
        Network {
            subnets: vpc.subnets().to_vec(),
            security_groups: vpc.security_groups().to_vec(),
            assign_public_ip: vpc.assign_public_ip() == Some(&AssignPublicIp::Enabled),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_scheduler::types::ScheduleState;

    fn spec(dlq: Option<&str>) -> ScheduleSpec {
        ScheduleSpec {
            name: "backhaul-dev".into(),
            expression: "cron(0 2 * * ? *)".into(),
            timezone: "Asia/Singapore".into(),
            description: "backhaul backups for stage dev".into(),
            target: TargetSpec {
                cluster_arn: "arn:aws:ecs:us-east-1:123456789012:cluster/backhaul-dev".into(),
                task_definition_arn:
                    "arn:aws:ecs:us-east-1:123456789012:task-definition/backhaul-dev:3".into(),
                role_arn: "arn:aws:iam::123456789012:role/events".into(),
                platform_version: "LATEST".into(),
                network: Network {
                    subnets: vec!["subnet-1".into()],
                    security_groups: vec!["sg-1".into()],
                    assign_public_ip: false,
                },
            },
            retry_attempts: 3,
            dead_letter_arn: dlq.map(str::to_string),
        }
    }

    /// What GetSchedule returns for a schedule created from `s`.
    fn as_created(s: &ScheduleSpec) -> GetScheduleOutput {
        GetScheduleOutput::builder()
            .name(&s.name)
            .schedule_expression(&s.expression)
            .schedule_expression_timezone(&s.timezone)
            .state(ScheduleState::Enabled)
            .description(&s.description)
            .flexible_time_window(ScheduleSpec::flexible_time_window().unwrap())
            .target(s.target().unwrap())
            .build()
    }

    #[test]
    fn created_schedule_matches_its_spec_and_any_change_does_not() {
        for dlq in [
            None,
            Some("arn:aws:sqs:us-east-1:123456789012:backhaul-dlq"),
        ] {
            let s = spec(dlq);
            assert_eq!(observed(&as_created(&s)), s.to_json());
            let mut other = s.clone();
            other.timezone = "Europe/Berlin".into();
            assert_ne!(observed(&as_created(&s)), other.to_json());
            let mut other = s.clone();
            other.target.task_definition_arn.push('4');
            assert_ne!(observed(&as_created(&s)), other.to_json());
        }
        let j = spec(None).to_json();
        assert!(j["Target"].get("DeadLetterConfig").is_none());
        assert_eq!(j["FlexibleTimeWindow"], json!({"Mode": "OFF"}));
        let t = spec(None).target().unwrap();
        assert_eq!(
            network_of(&t).unwrap().0,
            "arn:aws:ecs:us-east-1:123456789012:cluster/backhaul-dev"
        );
    }
}
