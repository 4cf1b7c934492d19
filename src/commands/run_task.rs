//! `backhaul run-task`: start the stage's backup task now, where the schedule would start it,
//! and optionally wait for it to exit so CI or an operator gets the backup's own exit code.

use std::time::Duration;

use anyhow::Context;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, ContainerOverride, KeyValuePair, LaunchType,
    NetworkConfiguration, Task, TaskOverride,
};
use serde_json::json;

use crate::aws::ecs::{task_id, CONTAINER};
use crate::aws::events::{network_of, rule_name, Network, TARGET_ID};
use crate::aws::logs::LogLocation;
use crate::aws::{build_err, sdk_err, Clients};
use crate::cli::RunTaskArgs;
use crate::commands::common::parse_duration;
use crate::commands::logs::{echo, Tail};
use crate::commands::schedule::{latest_active, parse_kv, targets};
use crate::config::{non_empty, ConfigError};

/// The task stopped with a failure; `main` exits with `code`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TaskFailed {
    pub code: u8,
    pub message: String,
}

pub async fn run(a: RunTaskArgs) -> anyhow::Result<()> {
    let stage = crate::config::scheduled_stage(a.stage.clone())?;
    let env = a
        .env
        .iter()
        .map(|e| parse_kv(e, "--env"))
        .collect::<Result<Vec<_>, _>>()?;
    let poll = parse_duration(&a.poll_interval, "BACKHAUL_POLL_INTERVAL")?;
    let c = Clients::load().await?;
    let family = rule_name(&stage);
    let td = latest_active(&c.ecs, &family)
        .await?
        .ok_or_else(|| super::NotScheduled(stage.clone()))?;
    let (cluster, network) = placement(&c, &a, &stage).await?;
    let task = start(
        &c,
        &cluster,
        &family,
        &network,
        &a.network.platform_version,
        &env,
    )
    .await?;
    let task_arn = task.task_arn().unwrap_or_default().to_string();
    let loc = LogLocation::of(&td);
    let id = task_id(&task_arn);
    println!(
        "{}",
        json!({
            "task_arn": task_arn,
            "log_group": loc.as_ref().map(|l| l.group.clone()),
            "log_stream": loc.as_ref().map(|l| l.stream(id)),
        })
    );
    if a.wait {
        // The task's own lines go to stderr while it runs; stdout stays the result.
        let mut tail = loc.map(|l| Tail::new(c.logs(&l.region), &l, id));
        wait(&c, &cluster, &task_arn, poll, tail.as_mut()).await?;
    }
    Ok(())
}

/// Cluster and network: flags win, then the rule's target, then defaults; subnets and
/// security groups have no default.
async fn placement(c: &Clients, a: &RunTaskArgs, stage: &str) -> anyhow::Result<(String, Network)> {
    let from_rule = targets(c, &rule_name(stage))
        .await?
        .iter()
        .find(|t| t.id() == TARGET_ID)
        .and_then(network_of);
    // A stage scheduled in a time zone has a Scheduler schedule instead of a rule.
    let from_rule = match from_rule {
        Some(r) => Some(r),
        None => crate::commands::schedule::scheduler::status(c, stage)
            .await?
            .and_then(|z| z.network),
    };
    let (rule_cluster, rule_net) = from_rule.unzip();
    let pick = |flag: &[String], rule: Option<Vec<String>>| {
        let flag: Vec<String> = flag.iter().filter(|s| !s.is_empty()).cloned().collect();
        if flag.is_empty() {
            rule.unwrap_or_default()
        } else {
            flag
        }
    };
    let network = Network {
        subnets: pick(
            &a.network.subnets,
            rule_net.as_ref().map(|n| n.subnets.clone()),
        ),
        security_groups: pick(
            &a.network.security_groups,
            rule_net.as_ref().map(|n| n.security_groups.clone()),
        ),
        assign_public_ip: a.network.assign_public_ip
            || rule_net.as_ref().is_some_and(|n| n.assign_public_ip),
    };
    for (list, var) in [
        (&network.subnets, "--subnets"),
        (&network.security_groups, "--security-groups"),
    ] {
        if list.is_empty() {
            return Err(ConfigError::missing(
                var,
                format!("the stage has no schedule (rule backhaul-{stage}) to read it from"),
            )
            .into());
        }
    }
    let cluster = non_empty(a.network.cluster.clone())
        .or(rule_cluster)
        .unwrap_or_else(|| format!("backhaul-{stage}"));
    Ok((cluster, network))
}

async fn start(
    c: &Clients,
    cluster: &str,
    family: &str,
    network: &Network,
    platform_version: &str,
    env: &[(String, String)],
) -> anyhow::Result<Task> {
    let vpc = AwsVpcConfiguration::builder()
        .set_subnets(Some(network.subnets.clone()))
        .set_security_groups(Some(network.security_groups.clone()))
        .assign_public_ip(AssignPublicIp::from(network.assign_public_ip_str()))
        .build()
        .map_err(build_err)?;
    let mut container = ContainerOverride::builder().name(CONTAINER);
    for (k, v) in env {
        container = container.environment(KeyValuePair::builder().name(k).value(v).build());
    }
    let out = c
        .ecs
        .run_task()
        .cluster(cluster)
        .task_definition(family)
        .launch_type(LaunchType::Fargate)
        .platform_version(platform_version)
        .count(1)
        .network_configuration(
            NetworkConfiguration::builder()
                .awsvpc_configuration(vpc)
                .build(),
        )
        .overrides(
            TaskOverride::builder()
                .container_overrides(container.build())
                .build(),
        )
        .send()
        .await
        .map_err(|e| sdk_err("ecs:RunTask", e))?;
    if let Some(f) = out.failures().first() {
        return Err(crate::aws::error::AwsError {
            operation: "ecs:RunTask".to_string(),
            code: f.reason().unwrap_or("Failure").to_string(),
            message: format!(
                "task {family} on cluster {cluster}: {}",
                f.detail().unwrap_or("no detail given")
            ),
            hint: None,
        }
        .into());
    }
    out.tasks()
        .first()
        .cloned()
        .with_context(|| format!("RunTask {family} returned no task"))
}

/// Polls until STOPPED, echoing the task's log; the container's exit code becomes ours.
async fn wait(
    c: &Clients,
    cluster: &str,
    task_arn: &str,
    poll: Duration,
    mut tail: Option<&mut Tail>,
) -> anyhow::Result<()> {
    loop {
        let out = c
            .ecs
            .describe_tasks()
            .cluster(cluster)
            .tasks(task_arn)
            .send()
            .await
            .map_err(|e| sdk_err("ecs:DescribeTasks", e))?;
        let task = out
            .tasks()
            .first()
            .with_context(|| format!("task {task_arn} disappeared"))?;
        let stopped = task.last_status() == Some("STOPPED");
        if let Some(t) = tail.as_deref_mut() {
            // A log that cannot be read must not hide the exit code we are waiting for.
            if let Err(e) = echo(t).await {
                tracing::warn!("{e:#}");
            }
        }
        if stopped {
            return outcome(task);
        }
        tokio::time::sleep(poll).await;
    }
}

fn outcome(task: &Task) -> anyhow::Result<()> {
    let container = task
        .containers()
        .iter()
        .find(|c| c.name() == Some(CONTAINER));
    let reason = task.stopped_reason().unwrap_or("no reason given");
    match container.and_then(|c| c.exit_code()) {
        Some(0) => Ok(()),
        Some(code) => Err(TaskFailed {
            code: u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1),
            message: format!("task exited with code {code}: {reason}"),
        }
        .into()),
        None => Err(TaskFailed {
            code: 1,
            message: format!("task stopped without an exit code: {reason}"),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::Container;

    fn stopped(exit: Option<i32>) -> Task {
        Task::builder()
            .last_status("STOPPED")
            .stopped_reason("Essential container in task exited")
            .containers(
                Container::builder()
                    .name(CONTAINER)
                    .set_exit_code(exit)
                    .build(),
            )
            .build()
    }

    fn code(r: anyhow::Result<()>) -> Option<(u8, String)> {
        r.err().map(|e| {
            let t = e.downcast_ref::<TaskFailed>().unwrap();
            (t.code, t.message.clone())
        })
    }

    #[test]
    fn container_exit_code_becomes_ours() {
        assert_eq!(code(outcome(&stopped(Some(0)))), None);
        assert_eq!(
            code(outcome(&stopped(Some(3)))),
            Some((
                3,
                "task exited with code 3: Essential container in task exited".into()
            ))
        );
        // Codes that do not fit an exit status still mean failure.
        assert_eq!(code(outcome(&stopped(Some(256)))).unwrap().0, 1);
        assert_eq!(
            code(outcome(&stopped(None))),
            Some((
                1,
                "task stopped without an exit code: Essential container in task exited".into()
            ))
        );
    }
}
