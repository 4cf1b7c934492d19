//! The task definition `schedule` registers, as a plain value: built from flags, turned into
//! SDK types, rendered for `--dry-run`, and compared with what ECS already has so an unchanged
//! configuration does not pile up revisions.

use std::collections::BTreeMap;

use aws_sdk_ecs::types::{
    Compatibility, ContainerDefinition, EphemeralStorage, KeyValuePair, LogConfiguration,
    LogDriver, NetworkMode, Secret as EcsSecret, Tag, TaskDefinition,
};
use serde_json::{json, Value};

/// The one container's name; `run-task` overrides and log stream names refer to it.
pub const CONTAINER: &str = "backhaul";

/// Seconds ECS waits between SIGTERM and SIGKILL: long enough to abort a multipart upload.
pub const STOP_TIMEOUT: i32 = 120;

/// Everything `schedule` sets on the task definition; the fields compared for "unchanged".
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub family: String,
    pub stage: String,
    pub cpu: u32,
    pub memory: u32,
    pub image: String,
    pub command: Vec<String>,
    /// Sorted by name (BTreeMap), always containing STAGE.
    pub env: BTreeMap<String, String>,
    /// Name → valueFrom (Secrets Manager or SSM ARN).
    pub secrets: BTreeMap<String, String>,
    pub execution_role_arn: String,
    /// Required: without a task role the container has no credentials for S3.
    pub task_role_arn: String,
    /// Fargate ephemeral storage; `None` keeps Fargate's default of 20 GiB.
    pub ephemeral_storage_gib: Option<u32>,
    pub log: LogSpec,
}

/// Fargate's ephemeral storage range when set explicitly (ECS API `EphemeralStorage`).
pub const EPHEMERAL_STORAGE_GIB: std::ops::RangeInclusive<u32> = 21..=200;

#[derive(Debug, Clone, PartialEq)]
pub struct LogSpec {
    pub group: String,
    pub region: String,
    pub stream_prefix: String,
}

impl LogSpec {
    /// awslogs options. The group is created by infrastructure, never by the task (which
    /// would need logs:CreateLogGroup on its execution role) — and `awslogs-create-group` is
    /// left out entirely rather than set to "false": real ECS accepts only "true" for it
    /// (ClientException "should only be set to 'true', else omit option").
    pub fn options(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("awslogs-group".to_string(), self.group.clone()),
            ("awslogs-region".to_string(), self.region.clone()),
            (
                "awslogs-stream-prefix".to_string(),
                self.stream_prefix.clone(),
            ),
        ])
    }
}

impl TaskSpec {
    pub fn container(&self) -> Result<ContainerDefinition, aws_sdk_ecs::error::BuildError> {
        let mut log = LogConfiguration::builder().log_driver(LogDriver::Awslogs);
        for (k, v) in self.log.options() {
            log = log.options(k, v);
        }
        let mut c = ContainerDefinition::builder()
            .name(CONTAINER)
            .image(&self.image)
            .essential(true)
            .set_command(Some(self.command.clone()))
            // RunTask on moto (and the task-level size on Fargate) wants a container size.
            .memory(self.memory as i32)
            .stop_timeout(STOP_TIMEOUT)
            .log_configuration(log.build()?);
        for (k, v) in &self.env {
            c = c.environment(KeyValuePair::builder().name(k).value(v).build());
        }
        for (k, v) in &self.secrets {
            c = c.secrets(EcsSecret::builder().name(k).value_from(v).build()?);
        }
        Ok(c.build())
    }

    pub fn tags(&self) -> Vec<Tag> {
        vec![Tag::builder()
            .key("backhaul:stage")
            .value(&self.stage)
            .build()]
    }

    /// Applies the spec to a RegisterTaskDefinition call.
    pub fn register(
        &self,
        client: &aws_sdk_ecs::Client,
    ) -> Result<
        aws_sdk_ecs::operation::register_task_definition::builders::RegisterTaskDefinitionFluentBuilder,
        aws_sdk_ecs::error::BuildError,
    >{
        let storage = self
            .ephemeral_storage_gib
            .map(|g| EphemeralStorage::builder().size_in_gib(g as i32).build());
        Ok(client
            .register_task_definition()
            .family(&self.family)
            .requires_compatibilities(Compatibility::Fargate)
            .network_mode(NetworkMode::Awsvpc)
            .cpu(self.cpu.to_string())
            .memory(self.memory.to_string())
            .execution_role_arn(&self.execution_role_arn)
            .task_role_arn(&self.task_role_arn)
            .set_ephemeral_storage(storage)
            .container_definitions(self.container()?)
            .set_tags(Some(self.tags())))
    }

    /// True when `existing` already has every field we set, so no new revision is needed.
    /// Lists are compared sorted: ECS does not promise to keep our order.
    pub fn matches(&self, existing: &TaskDefinition) -> bool {
        let top = existing.cpu() == Some(self.cpu.to_string().as_str())
            && existing.memory() == Some(self.memory.to_string().as_str())
            && existing.network_mode() == Some(&NetworkMode::Awsvpc)
            && existing.requires_compatibilities() == [Compatibility::Fargate]
            && existing.execution_role_arn() == Some(self.execution_role_arn.as_str())
            && existing.task_role_arn() == Some(self.task_role_arn.as_str())
            && existing.ephemeral_storage().map(|e| e.size_in_gib() as u32)
                == self.ephemeral_storage_gib;
        match existing.container_definitions() {
            [c] => top && self.container_matches(c),
            _ => false,
        }
    }

    fn container_matches(&self, c: &ContainerDefinition) -> bool {
        let env: BTreeMap<String, String> = c
            .environment()
            .iter()
            .map(|kv| {
                (
                    kv.name().unwrap_or_default().to_string(),
                    kv.value().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let secrets: BTreeMap<String, String> = c
            .secrets()
            .iter()
            .map(|s| (s.name().to_string(), s.value_from().to_string()))
            .collect();
        let log: Option<BTreeMap<String, String>> = c.log_configuration().and_then(|l| {
            (l.log_driver() == &LogDriver::Awslogs).then(|| {
                l.options()
                    .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default()
            })
        });
        c.name() == Some(CONTAINER)
            && c.image() == Some(self.image.as_str())
            && c.essential() == Some(true)
            && c.command() == self.command.as_slice()
            && c.memory() == Some(self.memory as i32)
            && c.stop_timeout() == Some(STOP_TIMEOUT)
            && env.len() == c.environment().len()
            && env == self.env
            && secrets == self.secrets
            && log == Some(self.log.options())
    }

    /// The RegisterTaskDefinition input in AWS's JSON spelling, for `--dry-run`.
    pub fn to_json(&self) -> Value {
        let env: Vec<Value> = self
            .env
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        let secrets: Vec<Value> = self
            .secrets
            .iter()
            .map(|(k, v)| json!({"name": k, "valueFrom": v}))
            .collect();
        let mut input = json!({
            "family": self.family,
            "requiresCompatibilities": ["FARGATE"],
            "networkMode": "awsvpc",
            "cpu": self.cpu.to_string(),
            "memory": self.memory.to_string(),
            "executionRoleArn": self.execution_role_arn,
            "taskRoleArn": self.task_role_arn,
            "containerDefinitions": [{
                "name": CONTAINER,
                "image": self.image,
                "essential": true,
                "command": self.command,
                // The SDK always sends the container's cpu (0 = no reservation of its own,
                // the task-level cpu applies); shown so the plan is byte-for-byte the request.
                "cpu": 0,
                "memory": self.memory,
                "stopTimeout": STOP_TIMEOUT,
                "environment": env,
                "secrets": secrets,
                "logConfiguration": {"logDriver": "awslogs", "options": self.log.options()},
            }],
            "tags": [{"key": "backhaul:stage", "value": self.stage}],
        });
        if let Some(g) = self.ephemeral_storage_gib {
            input["ephemeralStorage"] = json!({ "sizeInGiB": g });
        }
        input
    }
}

/// Revision number at the end of a task definition ARN (`...:task-definition/family:7`).
pub fn revision_of(arn: &str) -> Option<i32> {
    arn.rsplit_once(':')?.1.parse().ok()
}

/// Family part of a task definition ARN, so a listing by prefix can be filtered to exactly
/// our family (`backhaul-dev` must not pick up `backhaul-dev2`).
pub fn family_of(arn: &str) -> Option<&str> {
    let name = arn.rsplit_once('/')?.1;
    Some(name.rsplit_once(':')?.0)
}

/// Task id (last ARN segment), which names the awslogs stream.
pub fn task_id(task_arn: &str) -> &str {
    task_arn.rsplit('/').next().unwrap_or(task_arn)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn spec() -> TaskSpec {
        TaskSpec {
            family: "backhaul-dev".into(),
            stage: "dev".into(),
            cpu: 512,
            memory: 1024,
            image: "img:1".into(),
            command: vec!["backup".into()],
            env: BTreeMap::from([("STAGE".into(), "dev".into()), ("A".into(), "1".into())]),
            secrets: BTreeMap::from([(
                "POSTGRES_SECRET".into(),
                "arn:aws:secretsmanager:us-east-1:1:secret:x".into(),
            )]),
            execution_role_arn: "arn:aws:iam::1:role/exec".into(),
            task_role_arn: "arn:aws:iam::1:role/task".into(),
            ephemeral_storage_gib: None,
            log: LogSpec {
                group: "/backhaul/dev".into(),
                region: "us-east-1".into(),
                stream_prefix: "backhaul".into(),
            },
        }
    }

    fn as_registered(s: &TaskSpec) -> TaskDefinition {
        let mut c = s.container().unwrap();
        // ECS may hand the environment back in another order.
        c.environment.as_mut().unwrap().reverse();
        TaskDefinition::builder()
            .cpu("512")
            .memory("1024")
            .network_mode(NetworkMode::Awsvpc)
            .requires_compatibilities(Compatibility::Fargate)
            .execution_role_arn(&s.execution_role_arn)
            .task_role_arn(&s.task_role_arn)
            .container_definitions(c)
            .build()
    }

    #[test]
    fn registered_spec_matches_regardless_of_env_order() {
        let s = spec();
        assert!(s.matches(&as_registered(&s)));
    }

    #[test]
    fn any_changed_field_is_a_new_revision() {
        let s = spec();
        let existing = as_registered(&s);
        let mut changed = s.clone();
        changed.env.insert("B".into(), "2".into());
        assert!(!changed.matches(&existing));
        let mut changed = s.clone();
        changed.image = "img:2".into();
        assert!(!changed.matches(&existing));
        let mut changed = s.clone();
        changed.task_role_arn = "arn:aws:iam::1:role/other".into();
        assert!(!changed.matches(&existing));
        let mut changed = s.clone();
        changed.ephemeral_storage_gib = Some(50);
        assert!(!changed.matches(&existing));
    }

    #[test]
    fn arn_parts() {
        let arn = "arn:aws:ecs:us-east-1:1:task-definition/backhaul-dev:7";
        assert_eq!(revision_of(arn), Some(7));
        assert_eq!(family_of(arn), Some("backhaul-dev"));
        assert_eq!(task_id("arn:aws:ecs:us-east-1:1:task/c/abc123"), "abc123");
    }
}
