//! `backhaul logs`: what a stage's task printed, without the console. The task is the newest
//! one ECS lists for the family (running or stopped), or `--task`; the log group and stream
//! come from that task's own task definition. ECS forgets stopped tasks after about an hour,
//! so without one the newest stream of the group is shown (last night's run).

use std::io::IsTerminal;

use anyhow::Context;
use aws_sdk_cloudwatchlogs::types::OrderBy;
use aws_sdk_ecs::types::{DesiredStatus, Task, TaskDefinition};

use crate::aws::ecs::{task_id, CONTAINER};
use crate::aws::events::{network_of, rule_name, TARGET_ID};
use crate::aws::logs::{self, LogLocation, Render, RunSummary};
use crate::aws::{names, sdk_err, Clients};
use crate::cli::{LogsArgs, OutputFormat};
use crate::commands::common::parse_duration;
use crate::commands::schedule::{latest_active, targets};
use crate::config::{non_empty, ConfigError};

/// Reads a stream forward from its start; each `next` returns the events added since.
pub struct Tail {
    client: aws_sdk_cloudwatchlogs::Client,
    group: String,
    stream: String,
    token: Option<String>,
}

impl Tail {
    pub fn new(client: aws_sdk_cloudwatchlogs::Client, loc: &LogLocation, task: &str) -> Tail {
        Tail {
            client,
            group: loc.group.clone(),
            stream: loc.stream(task),
            token: None,
        }
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Events (timestamp ms, message) not returned before. A stream that does not exist yet
    /// (the task is still starting) has none.
    pub async fn next(&mut self) -> anyhow::Result<Vec<(i64, String)>> {
        let mut out = Vec::new();
        loop {
            let res = self
                .client
                .get_log_events()
                .log_group_name(&self.group)
                .log_stream_name(&self.stream)
                .start_from_head(true)
                .set_next_token(self.token.clone())
                .send()
                .await;
            let page = match res {
                Ok(p) => p,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_not_found_exception()) =>
                {
                    return Ok(out)
                }
                Err(e) => return Err(sdk_err("logs:GetLogEvents", e)),
            };
            let n = page.events().len();
            out.extend(page.events().iter().map(|e| {
                (
                    e.timestamp().unwrap_or_default(),
                    e.message().unwrap_or_default().to_string(),
                )
            }));
            let next = page.next_forward_token().map(str::to_string);
            // The end of the stream answers with the token it was given.
            let done = n == 0 || next.is_none() || next == self.token;
            if next.is_some() {
                self.token = next;
            }
            if done {
                return Ok(out);
            }
        }
    }
}

pub async fn run(a: LogsArgs) -> anyhow::Result<()> {
    let stage = crate::config::scheduled_stage(a.stage.clone())?;
    let poll = parse_duration(&a.poll_interval, "BACKHAUL_POLL_INTERVAL")?;
    if let Some(t) = &a.task {
        if task_id(t).is_empty() {
            return Err(ConfigError::invalid("--task", "is empty: give a task id or ARN").into());
        }
    }
    let how = match a.format {
        OutputFormat::Json => Render::Json,
        OutputFormat::Text => Render::Text,
        OutputFormat::Auto if std::io::stdout().is_terminal() => Render::Text,
        OutputFormat::Auto => Render::Json,
    };
    let c = Clients::load().await?;
    let family = rule_name(&stage);
    // Without a task definition there is no log location to read (and, usually, no cluster):
    // say the stage was never scheduled rather than pass on an ECS error.
    let latest = latest_active(&c.ecs, &family).await?;
    if latest.is_none() && a.task.is_none() {
        return Err(super::NotScheduled(stage).into());
    }
    let cluster = cluster(&c, a.cluster.clone(), &stage).await?;
    if let Some(n) = a.runs {
        return runs(&c, &cluster, &family, n as usize, how).await;
    }
    let task = match &a.task {
        Some(t) => match describe(&c, &cluster, std::slice::from_ref(t)).await {
            Ok(mut found) => found.pop(),
            // No task definition and no cluster of that name: nothing of this stage exists
            // to read logs from; say so rather than pass on ECS's error about a cluster.
            Err(e)
                if latest.is_none()
                    && e.downcast_ref::<crate::aws::error::AwsError>()
                        .is_some_and(|e| e.code == "ClusterNotFoundException") =>
            {
                return Err(super::NotScheduled(stage).into())
            }
            Err(e) => return Err(e),
        },
        None => newest_task(&c, &cluster, &family).await?,
    };
    let td = match task.as_ref().and_then(|t| t.task_definition_arn()) {
        Some(arn) => describe_td(&c, arn).await?,
        None => latest.ok_or_else(|| super::NotScheduled(stage.clone()))?,
    };
    let loc = location(&td, &family)?;
    let client = c.logs(&loc.region);
    let id = match (&task, &a.task) {
        (Some(t), _) => task_id(t.task_arn().unwrap_or_default()).to_string(),
        (None, Some(t)) => task_id(t).to_string(),
        (None, None) => newest_stream_task(&client, &loc).await?.with_context(|| {
            format!(
                "no task of {family} on cluster {cluster} and no log stream {}* in {}",
                loc.stream_name_prefix(),
                loc.group
            )
        })?,
    };
    let mut tail = Tail::new(client, &loc, &id);
    let state = task
        .as_ref()
        .and_then(|t| t.last_status())
        .unwrap_or("unknown (no longer listed by ECS)");
    eprintln!(
        "task {id} ({state}), log group {} stream {}",
        loc.group,
        tail.stream()
    );
    let mut printed = print(&tail.next().await?, how);
    let running = task
        .as_ref()
        .is_some_and(|t| t.last_status() != Some("STOPPED"));
    if a.follow && running {
        let stopped = loop {
            tokio::time::sleep(poll).await;
            let now = describe(&c, &cluster, std::slice::from_ref(&id))
                .await?
                .pop();
            let stopped = now
                .as_ref()
                .is_none_or(|t| t.last_status() == Some("STOPPED"));
            // Lines written just before the stop are read after seeing it.
            printed += print(&tail.next().await?, how);
            if stopped {
                break now;
            }
        };
        eprintln!("task {id} stopped: {}", stop_text(stopped.as_ref()));
    } else if let Some(t) = task.as_ref().filter(|t| t.last_status() == Some("STOPPED")) {
        eprintln!("task {id} stopped: {}", stop_text(Some(t)));
    }
    if printed == 0 {
        eprintln!("no log events in {} {}", loc.group, tail.stream());
    }
    Ok(())
}

fn print(events: &[(i64, String)], how: Render) -> usize {
    for (ts, m) in events {
        println!("{}", logs::render(*ts, m, how));
    }
    events.len()
}

/// Prints a task's new log lines to stderr (stdout carries `run-task`'s result).
pub async fn echo(tail: &mut Tail) -> anyhow::Result<()> {
    let how = if std::io::stderr().is_terminal() {
        Render::Text
    } else {
        Render::Json
    };
    for (ts, m) in tail.next().await? {
        eprintln!("{}", logs::render(ts, &m, how));
    }
    Ok(())
}

pub fn stop_text(t: Option<&Task>) -> String {
    let Some(t) = t else {
        return "no longer listed by ECS".to_string();
    };
    let code = exit_code(t).map_or("no exit code".to_string(), |c| format!("exit code {c}"));
    format!(
        "{code} ({})",
        t.stopped_reason().unwrap_or("no reason given")
    )
}

fn exit_code(t: &Task) -> Option<i32> {
    t.containers()
        .iter()
        .find(|c| c.name() == Some(CONTAINER))
        .and_then(|c| c.exit_code())
}

pub fn location(td: &TaskDefinition, family: &str) -> anyhow::Result<LogLocation> {
    LogLocation::of(td).with_context(|| {
        format!(
            "task definition {family}:{} has no awslogs log configuration: its output is not in CloudWatch Logs",
            td.revision()
        )
    })
}

/// `--cluster`, else the schedule's target cluster, else `backhaul-<stage>`.
async fn cluster(c: &Clients, flag: Option<String>, stage: &str) -> anyhow::Result<String> {
    if let Some(f) = non_empty(flag) {
        return Ok(f);
    }
    let from_rule = targets(c, &rule_name(stage))
        .await?
        .iter()
        .find(|t| t.id() == TARGET_ID)
        .and_then(network_of)
        .map(|(cluster, _)| cluster);
    let from_schedule = match from_rule {
        Some(found) => Some(found),
        None => crate::commands::schedule::scheduler::status(c, stage)
            .await?
            .and_then(|z| z.network)
            .map(|(cluster, _)| cluster),
    };
    Ok(from_schedule.unwrap_or_else(|| names::stage_resource(stage)))
}

async fn describe_td(c: &Clients, arn: &str) -> anyhow::Result<TaskDefinition> {
    c.ecs
        .describe_task_definition()
        .task_definition(arn)
        .send()
        .await
        .map_err(|e| sdk_err("ecs:DescribeTaskDefinition", e))?
        .task_definition()
        .cloned()
        .with_context(|| format!("DescribeTaskDefinition {arn} returned nothing"))
}

/// Tasks by id or ARN; ones ECS no longer knows are left out.
async fn describe(c: &Clients, cluster: &str, ids: &[String]) -> anyhow::Result<Vec<Task>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(100) {
        let res = c
            .ecs
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_err("ecs:DescribeTasks", e))?;
        out.extend(res.tasks().iter().cloned());
    }
    Ok(out)
}

/// The family's tasks ECS still lists, running and stopped.
async fn family_tasks(c: &Clients, cluster: &str, family: &str) -> anyhow::Result<Vec<Task>> {
    let mut arns = Vec::new();
    for status in [DesiredStatus::Running, DesiredStatus::Stopped] {
        let mut pages = c
            .ecs
            .list_tasks()
            .cluster(cluster)
            .family(family)
            .desired_status(status)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("ecs:ListTasks", e))?;
            arns.extend(page.task_arns().iter().cloned());
        }
    }
    arns.dedup();
    if arns.is_empty() {
        return Ok(Vec::new());
    }
    describe(c, cluster, &arns).await
}

/// Newest by start (or creation) time; ECS lists running tasks first.
async fn newest_task(c: &Clients, cluster: &str, family: &str) -> anyhow::Result<Option<Task>> {
    let tasks = family_tasks(c, cluster, family).await?;
    let key = |t: &Task| {
        t.started_at()
            .or(t.created_at())
            .map(|d| (d.secs(), d.subsec_nanos()))
    };
    Ok(tasks.into_iter().rev().max_by_key(|t| key(t)))
}

/// Our streams of the group, newest event first. (DescribeLogStreams cannot order by time
/// and filter by prefix at once, so the prefix is applied here.)
async fn streams(
    client: &aws_sdk_cloudwatchlogs::Client,
    loc: &LogLocation,
    limit: usize,
) -> anyhow::Result<Vec<aws_sdk_cloudwatchlogs::types::LogStream>> {
    let mut out = Vec::new();
    let mut pages = client
        .describe_log_streams()
        .log_group_name(&loc.group)
        .order_by(OrderBy::LastEventTime)
        .descending(true)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(p) => p,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                return Err(anyhow::anyhow!(
                    "logs:DescribeLogStreams: log group {} does not exist (create it: infra/backhaul.yaml does, `schedule` does not)",
                    loc.group
                ))
            }
            Err(e) => return Err(sdk_err("logs:DescribeLogStreams", e)),
        };
        for s in page.log_streams() {
            if s.log_stream_name()
                .is_some_and(|n| loc.task_of(n).is_some())
            {
                out.push(s.clone());
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

async fn newest_stream_task(
    client: &aws_sdk_cloudwatchlogs::Client,
    loc: &LogLocation,
) -> anyhow::Result<Option<String>> {
    Ok(streams(client, loc, 1)
        .await?
        .first()
        .and_then(|s| s.log_stream_name())
        .and_then(|n| loc.task_of(n))
        .map(str::to_string))
}

/// `--runs N`: the newest N streams, each summarised from its artifact lines and, while ECS
/// still knows the task, its exit code.
async fn runs(
    c: &Clients,
    cluster: &str,
    family: &str,
    n: usize,
    how: Render,
) -> anyhow::Result<()> {
    let td = latest_active(&c.ecs, family)
        .await?
        .with_context(|| format!("no active task definition {family}"))?;
    let loc = location(&td, family)?;
    let client = c.logs(&loc.region);
    let streams = streams(&client, &loc, n).await?;
    let ids: Vec<String> = streams
        .iter()
        .filter_map(|s| loc.task_of(s.log_stream_name()?).map(str::to_string))
        .collect();
    let known = if ids.is_empty() {
        Vec::new()
    } else {
        describe(c, cluster, &ids).await?
    };
    for id in &ids {
        let mut tail = Tail::new(client.clone(), &loc, id);
        let events = tail.next().await?;
        let messages: Vec<&str> = events.iter().map(|(_, m)| m.as_str()).collect();
        let artifacts = logs::artifacts(&messages);
        let task = known
            .iter()
            .find(|t| t.task_arn().map(task_id) == Some(id.as_str()));
        let state = match task.and_then(|t| t.last_status()) {
            Some("STOPPED") => "stopped",
            Some(_) => "running",
            None => "unknown",
        };
        let summary = RunSummary {
            task_id: id.clone(),
            log_stream: tail.stream().to_string(),
            start: logs::iso_millis(events.first().map(|e| e.0)),
            end: logs::iso_millis(events.last().map(|e| e.0)),
            exit_code: task
                .filter(|t| t.last_status() == Some("STOPPED"))
                .and_then(exit_code),
            state: state.to_string(),
            outcome: logs::outcome(&artifacts).to_string(),
            artifacts,
        };
        match how {
            Render::Json => println!("{}", serde_json::to_string(&summary)?),
            Render::Text => print!("{}", logs::summary_text(&summary)),
        }
    }
    if ids.is_empty() {
        eprintln!(
            "no runs: no log stream {}* in {}",
            loc.stream_name_prefix(),
            loc.group
        );
    }
    Ok(())
}
