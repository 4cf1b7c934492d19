//! The EventBridge rule and its single ECS target, as plain values turned into SDK types and
//! into `--dry-run` JSON.

use aws_sdk_eventbridge::types::{
    AssignPublicIp, AwsVpcConfiguration, EcsParameters, LaunchType, NetworkConfiguration, Target,
};
use serde_json::{json, Value};

/// The only target id we create; any other target on our rule is removed.
pub const TARGET_ID: &str = "backhaul";

#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub name: String,
    /// Canonical form from `schedule_expr`, never the user's raw text.
    pub schedule: String,
    pub description: String,
}

impl RuleSpec {
    pub fn for_stage(stage: &str, schedule: String) -> RuleSpec {
        RuleSpec {
            name: rule_name(stage),
            schedule,
            description: format!("backhaul backups for stage {stage}"),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "Name": self.name,
            "ScheduleExpression": self.schedule,
            "State": "ENABLED",
            "Description": self.description,
        })
    }
}

pub fn rule_name(stage: &str) -> String {
    super::names::stage_resource(stage)
}

/// Where and how the scheduled task runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub assign_public_ip: bool,
}

impl Network {
    pub fn assign_public_ip_str(&self) -> &'static str {
        if self.assign_public_ip {
            "ENABLED"
        } else {
            "DISABLED"
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    pub cluster_arn: String,
    pub task_definition_arn: String,
    pub role_arn: String,
    pub platform_version: String,
    pub network: Network,
}

impl TargetSpec {
    pub fn target(&self) -> Result<Target, aws_sdk_eventbridge::error::BuildError> {
        let vpc = AwsVpcConfiguration::builder()
            .set_subnets(Some(self.network.subnets.clone()))
            .set_security_groups(Some(self.network.security_groups.clone()))
            .assign_public_ip(AssignPublicIp::from(self.network.assign_public_ip_str()))
            .build()?;
        let ecs = EcsParameters::builder()
            .task_definition_arn(&self.task_definition_arn)
            .task_count(1)
            .launch_type(LaunchType::Fargate)
            .platform_version(&self.platform_version)
            .network_configuration(
                NetworkConfiguration::builder()
                    .awsvpc_configuration(vpc)
                    .build(),
            )
            .build()?;
        Target::builder()
            .id(TARGET_ID)
            .arn(&self.cluster_arn)
            .role_arn(&self.role_arn)
            .ecs_parameters(ecs)
            .build()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "Id": TARGET_ID,
            "Arn": self.cluster_arn,
            "RoleArn": self.role_arn,
            "EcsParameters": {
                "TaskDefinitionArn": self.task_definition_arn,
                "TaskCount": 1,
                "LaunchType": "FARGATE",
                "PlatformVersion": self.platform_version,
                "NetworkConfiguration": {"awsvpcConfiguration": {
                    "Subnets": self.network.subnets,
                    "SecurityGroups": self.network.security_groups,
                    "AssignPublicIp": self.network.assign_public_ip_str(),
                }},
            },
        })
    }
}

/// Network settings read back from an existing target, so `run-task` launches exactly where
/// the schedule would.
pub fn network_of(t: &Target) -> Option<(String, Network)> {
    let ecs = t.ecs_parameters()?;
    let vpc = ecs.network_configuration()?.awsvpc_configuration()?;
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

    #[test]
    fn target_round_trips_network() {
        let spec = TargetSpec {
            cluster_arn: "arn:aws:ecs:us-east-1:1:cluster/backhaul-dev".into(),
            task_definition_arn: "arn:aws:ecs:us-east-1:1:task-definition/backhaul-dev:1".into(),
            role_arn: "arn:aws:iam::1:role/events".into(),
            platform_version: "LATEST".into(),
            network: Network {
                subnets: vec!["subnet-1".into()],
                security_groups: vec!["sg-1".into()],
                assign_public_ip: true,
            },
        };
        let t = spec.target().unwrap();
        assert_eq!(t.id(), TARGET_ID);
        assert_eq!(
            network_of(&t),
            Some((spec.cluster_arn.clone(), spec.network))
        );
    }
}
