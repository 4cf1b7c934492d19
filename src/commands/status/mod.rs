//! `backhaul status`: what is scheduled for a stage and what it last produced. Shows variable
//! names only: values in a task definition may be sensitive even when they should not be.

pub mod check;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::ecs::CONTAINER;
use crate::aws::events::{network_of, rule_name, TARGET_ID};
use crate::aws::{sdk_err, Clients};
use crate::cli::{StatusArgs, StoreArgs};
use crate::commands::common::Store;
use crate::config::non_empty;
use crate::layout::MANIFEST_SUFFIX;
use crate::storage::Incomplete;

/// Backups shown.
const RECENT: usize = 5;

#[derive(Debug, Serialize, Default)]
struct Status {
    stage: String,
    rule: Option<RuleStatus>,
    target: Option<TargetStatus>,
    task_definition: Option<TaskStatus>,
    bucket: Option<String>,
    /// The EventBridge Scheduler schedule of a stage scheduled in a time zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    zoned_schedule: Option<crate::commands::schedule::scheduler::ZonedStatus>,
    /// The no-backup alarm and failure rule `schedule --alarm-topic-arn` created.
    #[serde(skip_serializing_if = "Option::is_none")]
    alarm: Option<crate::commands::schedule::alarms::AlarmStatus>,
    /// Next three run times of whichever schedule exists, in its zone (UTC for the rule).
    next_runs: Vec<String>,
    recent_backups: Vec<String>,
    /// Entries that cannot be trusted as they are, by key: `object missing` (a manifest whose
    /// backup is gone) or `manifest unreadable: <why>`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    problems: std::collections::BTreeMap<String, String>,
    /// Object Lock of the recent backups that have one, by key.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    locked: std::collections::BTreeMap<String, String>,
    /// Writes under the stage's prefix that never finished (a run killed mid-upload).
    #[serde(skip_serializing_if = "Option::is_none")]
    incomplete_uploads: Option<IncompleteUploads>,
    /// Why backups could not be listed; the schedule part of the report is still useful.
    #[serde(skip_serializing_if = "Option::is_none")]
    backups_error: Option<String>,
    /// Local temp paths a killed run left that this user cannot remove (`path: error`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stale_temp_paths: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
struct IncompleteUploads {
    count: usize,
    /// Bytes of the parts uploaded so far: what they cost until aborted. `None` when the
    /// server would not list some upload's parts.
    bytes: Option<u64>,
    oldest_initiated: Option<DateTime<Utc>>,
}

impl IncompleteUploads {
    fn of(uploads: &[Incomplete]) -> IncompleteUploads {
        IncompleteUploads {
            count: uploads.len(),
            bytes: uploads.iter().map(|u| u.bytes).sum(),
            oldest_initiated: uploads.iter().filter_map(|u| u.initiated).min(),
        }
    }
}

#[derive(Debug, Serialize)]
struct RuleStatus {
    name: String,
    schedule: Option<String>,
    state: Option<String>,
}

#[derive(Debug, Serialize)]
struct TargetStatus {
    cluster: String,
    task_definition_arn: Option<String>,
    subnets: Vec<String>,
    security_groups: Vec<String>,
    assign_public_ip: bool,
}

#[derive(Debug, Serialize)]
struct TaskStatus {
    family: String,
    revision: i32,
    image: Option<String>,
    env_names: Vec<String>,
    secret_names: Vec<String>,
    /// The task's S3_BUCKET, BACKUP_PREFIX and BACKUP_TIMEZONE: where its backups are.
    #[serde(skip)]
    store_env: std::collections::BTreeMap<String, String>,
}

/// The settings that place a task's backups; the rest of its environment is not read.
const STORE_ENV: [&str; 3] = ["S3_BUCKET", "BACKUP_PREFIX", "BACKUP_TIMEZONE"];

/// The store to read a stage's backups from. One the command names (`--bucket`/`S3_BUCKET`,
/// `--dest`) is used as given; otherwise the stage's task's: its bucket, and its prefix and
/// time zone where the command sets none. Reading the task's bucket with the command's empty
/// prefix would find no backups, and an overdue check would say so of a healthy stage.
fn with_task_store(user: &StoreArgs, task: Option<&TaskStatus>) -> StoreArgs {
    let mut store = user.clone();
    let Some(task) = task else { return store };
    if non_empty(store.bucket.clone()).is_some() || store.dest.is_some() {
        return store;
    }
    let env = |k: &str| task.store_env.get(k).cloned();
    store.bucket = env("S3_BUCKET");
    if non_empty(store.prefix.clone()).is_none() {
        store.prefix = env("BACKUP_PREFIX");
    }
    if store.timezone == "UTC" {
        store.timezone = env("BACKUP_TIMEZONE").unwrap_or(store.timezone);
    }
    store
}

pub async fn run(a: StatusArgs) -> anyhow::Result<()> {
    let stage = crate::config::scheduled_stage(a.store.stage.clone())?;
    if a.check {
        return check::run(&a, &stage).await;
    }
    let work_dir = std::env::var_os("BACKUP_WORK_DIR").map(std::path::PathBuf::from);
    let stale_temp_paths =
        crate::private_fs::sweep_and_log(&crate::private_fs::temp_dirs(work_dir.as_deref()))
            .into_iter()
            .map(|(p, e)| format!("{}: {e}", p.display()))
            .collect();
    let c = Clients::load().await?;
    let mut st = Status {
        stale_temp_paths,
        rule: rule(&c, &stage).await?,
        target: target(&c, &stage).await?,
        task_definition: task(&c, &stage).await?,
        zoned_schedule: crate::commands::schedule::scheduler::status(&c, &stage).await?,
        alarm: crate::commands::schedule::alarms::status(&c, &stage).await?,
        stage,
        ..Status::default()
    };
    let scheduled =
        st.rule.is_some() || st.zoned_schedule.is_some() || st.task_definition.is_some();
    // Never scheduled, no bucket to show backups from and no leftovers here: nothing to
    // report but that.
    if !scheduled
        && non_empty(a.store.bucket.clone()).is_none()
        && a.store.dest.is_none()
        && st.stale_temp_paths.is_empty()
    {
        return Err(crate::commands::NotScheduled(st.stage).into());
    }
    st.next_runs = match (&st.zoned_schedule, &st.rule) {
        (Some(z), _) => crate::commands::schedule::scheduler::next_runs(
            z.schedule.as_deref(),
            z.timezone.as_deref(),
            3,
        ),
        (None, Some(r)) => {
            crate::commands::schedule::scheduler::next_runs(r.schedule.as_deref(), None, 3)
        }
        (None, None) => Vec::new(),
    };
    let store = with_task_store(&a.store, st.task_definition.as_ref());
    let bucket = non_empty(store.bucket.clone());
    if bucket.is_some() || store.dest.is_some() {
        match recent(&store).await {
            Ok((keys, incomplete, locked, problems)) => {
                st.recent_backups = keys;
                st.problems = problems;
                st.incomplete_uploads = Some(IncompleteUploads::of(&incomplete));
                st.locked = locked;
            }
            Err(e) => st.backups_error = Some(format!("{e:#}")),
        }
        st.bucket = bucket;
    }
    if a.json {
        println!("{}", serde_json::to_string(&st)?);
    } else {
        print!("{}", text(&st));
    }
    Ok(())
}

/// The stage's schedule expression and its time zone (`None`: UTC), the Scheduler
/// schedule's when there is one (it replaces the rule), else the rule's.
pub async fn schedule_of(
    c: &Clients,
    stage: &str,
) -> anyhow::Result<Option<(String, Option<String>)>> {
    if let Some(z) = crate::commands::schedule::scheduler::status(c, stage).await? {
        if let Some(expr) = z.schedule {
            return Ok(Some((expr, z.timezone)));
        }
    }
    Ok(rule(c, stage)
        .await?
        .and_then(|r| r.schedule)
        .map(|expr| (expr, None)))
}

/// The store of the stage's backups: the command's, else its latest task definition's.
pub async fn scheduled_store(
    c: &Clients,
    stage: &str,
    user: &StoreArgs,
) -> anyhow::Result<StoreArgs> {
    Ok(with_task_store(user, task(c, stage).await?.as_ref()))
}

async fn rule(c: &Clients, stage: &str) -> anyhow::Result<Option<RuleStatus>> {
    let name = rule_name(stage);
    match c.events.describe_rule().name(&name).send().await {
        Ok(r) => Ok(Some(RuleStatus {
            name,
            schedule: r.schedule_expression().map(str::to_string),
            state: r.state().map(|s| s.as_str().to_string()),
        })),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(sdk_err("events:DescribeRule", e)),
    }
}

async fn target(c: &Clients, stage: &str) -> anyhow::Result<Option<TargetStatus>> {
    let targets = crate::commands::schedule::targets(c, &rule_name(stage)).await?;
    Ok(targets.iter().find(|t| t.id() == TARGET_ID).and_then(|t| {
        let (cluster, net) = network_of(t)?;
        Some(TargetStatus {
            cluster,
            task_definition_arn: t
                .ecs_parameters()
                .map(|e| e.task_definition_arn().to_string()),
            subnets: net.subnets,
            security_groups: net.security_groups,
            assign_public_ip: net.assign_public_ip,
        })
    }))
}

async fn task(c: &Clients, stage: &str) -> anyhow::Result<Option<TaskStatus>> {
    let family = rule_name(stage);
    let Some(td) = crate::commands::schedule::latest_active(&c.ecs, &family).await? else {
        return Ok(None);
    };
    let container = td
        .container_definitions()
        .iter()
        .find(|c| c.name() == Some(CONTAINER));
    let env = container.map(|c| c.environment()).unwrap_or_default();
    Ok(Some(TaskStatus {
        family,
        revision: td.revision(),
        image: container.and_then(|c| c.image()).map(str::to_string),
        env_names: env
            .iter()
            .filter_map(|kv| kv.name().map(str::to_string))
            .collect(),
        secret_names: container
            .map(|c| c.secrets().iter().map(|s| s.name().to_string()).collect())
            .unwrap_or_default(),
        store_env: env
            .iter()
            .filter_map(|kv| Some((kv.name()?, kv.value()?)))
            .filter(|(k, _)| STORE_ENV.contains(k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }))
}

/// Newest artifact keys (manifests left out) under the stage prefix, the writes there that
/// never finished, the Object Lock of those keys that have one, and the stage's entries with
/// a problem (see [`crate::catalog::Problem`]).
type Recent = (
    Vec<String>,
    Vec<Incomplete>,
    std::collections::BTreeMap<String, String>,
    std::collections::BTreeMap<String, String>,
);

async fn recent(store: &crate::cli::StoreArgs) -> anyhow::Result<Recent> {
    let store = Store::resolve(store)?;
    let storage = store.open_existing().await?;
    let mut objects = storage.list(&store.stage_prefix()).await?;
    // A parallel backup is one: its entry (TOC) object stands for its data files.
    let dir_data = |k: &str| {
        k.contains(&format!("{}/", crate::layout::DIR_SUFFIX))
            && crate::layout::dir_folder(k).is_none()
    };
    objects.retain(|o| !o.key.ends_with(MANIFEST_SUFFIX) && !dir_data(&o.key));
    objects.sort_by(|a, b| (b.last_modified, &b.key).cmp(&(a.last_modified, &a.key)));
    let incomplete = storage.incomplete(&store.stage_prefix()).await?;
    let keys: Vec<String> = objects.into_iter().take(RECENT).map(|o| o.key).collect();
    let mut locked = std::collections::BTreeMap::new();
    for k in &keys {
        if let Some(d) = storage
            .lock(k)
            .await?
            .and_then(|l| l.describe(chrono::Utc::now()))
        {
            locked.insert(k.clone(), d);
        }
    }
    let problems = crate::catalog::load(
        &storage,
        &store.dest.key_prefix(),
        &store.stage,
        &store.zone,
        &crate::catalog::Filter::default(),
    )
    .await?
    .into_iter()
    .filter_map(|e| Some((e.key, e.problem?.to_string())))
    .collect();
    Ok((keys, incomplete, locked, problems))
}

fn text(st: &Status) -> String {
    let mut out = format!("stage: {}\n", st.stage);
    match &st.rule {
        Some(r) => {
            out += &format!(
                "rule: {} {} {}\n",
                r.name,
                r.state.as_deref().unwrap_or("?"),
                r.schedule.as_deref().unwrap_or("?")
            )
        }
        None if st.zoned_schedule.is_some() => out += "rule: none\n",
        None => out += "rule: none (not scheduled)\n",
    }
    if let Some(z) = &st.zoned_schedule {
        out += &format!(
            "schedule: {} {} {} in {}\n",
            z.name,
            z.state.as_deref().unwrap_or("?"),
            z.schedule.as_deref().unwrap_or("?"),
            z.timezone.as_deref().unwrap_or("UTC")
        );
    }
    if !st.next_runs.is_empty() {
        out += &format!("next runs: {}\n", st.next_runs.join(", "));
    }
    if let Some(a) = &st.alarm {
        out += &format!(
            "alarm: {} {} (no successful backup for {} s: {}); failure rule {}\n",
            a.name,
            a.state.as_deref().unwrap_or("?"),
            a.window_seconds.map_or("?".to_string(), |w| w.to_string()),
            a.reason.as_deref().unwrap_or("no state reason"),
            a.failure_rule.as_deref().unwrap_or("missing"),
        );
    }
    if let Some(t) = &st.target {
        out += &format!(
            "target: cluster {} task {} subnets {} security groups {} public ip {}\n",
            t.cluster,
            t.task_definition_arn.as_deref().unwrap_or("?"),
            t.subnets.join(","),
            t.security_groups.join(","),
            t.assign_public_ip
        );
    }
    match &st.task_definition {
        Some(t) => {
            out += &format!(
                "task definition: {}:{} image {}\n",
                t.family,
                t.revision,
                t.image.as_deref().unwrap_or("?")
            );
            out += &format!("env: {}\n", t.env_names.join(", "));
            out += &format!("secrets: {}\n", t.secret_names.join(", "));
        }
        None => out += "task definition: none\n",
    }
    if let Some(b) = &st.bucket {
        out += &format!("recent backups in {b}:\n");
        for k in &st.recent_backups {
            match st.locked.get(k) {
                Some(l) => out += &format!("  {k} (locked: {l})\n"),
                None => out += &format!("  {k}\n"),
            }
        }
        for (k, p) in &st.problems {
            out += &format!("  {k} ({p})\n");
        }
        if let Some(e) = &st.backups_error {
            out += &format!("  cannot list backups: {e}\n");
        }
        match &st.incomplete_uploads {
            Some(u) if u.count > 0 => {
                out += &format!(
                    "incomplete uploads: {} ({} bytes in parts, oldest initiated {}); `backhaul prune --abort-incomplete-older-than 24h` aborts those older than a day\n",
                    u.count,
                    u.bytes.map(|b| b.to_string()).unwrap_or_else(|| "unknown".into()),
                    u.oldest_initiated
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "?".into())
                )
            }
            Some(_) => out += "incomplete uploads: none\n",
            None => {}
        }
    }
    for p in &st.stale_temp_paths {
        out += &format!("cannot remove a killed run's temp path {p}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(key: &str, secs: i64, bytes: Option<u64>) -> Incomplete {
        Incomplete {
            key: key.into(),
            id: format!("id-{key}"),
            initiated: DateTime::from_timestamp(secs, 0),
            bytes,
        }
    }

    #[test]
    fn leftovers_are_counted_sized_and_dated() {
        let st = Status {
            stage: "prod".into(),
            bucket: Some("b".into()),
            incomplete_uploads: Some(IncompleteUploads::of(&[
                upload("prod/a", 2_000, Some(5 << 20)),
                upload("prod/b", 1_000, Some(1)),
            ])),
            ..Status::default()
        };
        let u = st.incomplete_uploads.as_ref().unwrap();
        assert_eq!((u.count, u.bytes), (2, Some((5 << 20) + 1)));
        assert_eq!(u.oldest_initiated, DateTime::from_timestamp(1_000, 0));
        let shown = text(&st);
        assert!(
            shown.contains("incomplete uploads: 2 (5242881 bytes in parts, oldest initiated 1970-01-01T00:16:40+00:00)"),
            "{shown}"
        );
        // One unsizable upload makes the total unknown rather than wrong.
        let unknown =
            IncompleteUploads::of(&[upload("prod/a", 1, None), upload("prod/b", 2, Some(3))]);
        assert_eq!(unknown.bytes, None);
        let none = Status {
            bucket: Some("b".into()),
            incomplete_uploads: Some(IncompleteUploads::of(&[])),
            ..Status::default()
        };
        assert!(text(&none).contains("incomplete uploads: none"));
    }
}
