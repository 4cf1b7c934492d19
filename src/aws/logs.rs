//! Where a task's log lives and how its lines are shown. Pure: the commands fetch, this
//! module decides names and text.
//!
//! The log group and stream prefix are read from the task definition's awslogs options, never
//! guessed: a stage scheduled with `--log-group`/`--log-stream-prefix` logs elsewhere, and
//! the awslogs driver names each stream `<prefix>/<container>/<task id>`.

use std::collections::BTreeMap;

use aws_sdk_ecs::types::TaskDefinition;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::ecs::CONTAINER;

/// The awslogs settings of the backhaul container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLocation {
    pub group: String,
    pub stream_prefix: String,
    /// Empty when the task definition does not say (the SDK's region applies).
    pub region: String,
}

impl LogLocation {
    /// From the task definition; `None` when the container does not log with awslogs.
    pub fn of(td: &TaskDefinition) -> Option<LogLocation> {
        let opts = td
            .container_definitions()
            .iter()
            .find(|c| c.name() == Some(CONTAINER))
            .and_then(|c| c.log_configuration())
            .filter(|l| l.log_driver().as_str() == "awslogs")
            .and_then(|l| l.options())?;
        let get = |k: &str| opts.get(k).cloned().unwrap_or_default();
        let group = get("awslogs-group");
        (!group.is_empty()).then(|| LogLocation {
            group,
            stream_prefix: get("awslogs-stream-prefix"),
            region: get("awslogs-region"),
        })
    }

    /// Streams of our container start with this (`<prefix>/backhaul/`).
    pub fn stream_name_prefix(&self) -> String {
        if self.stream_prefix.is_empty() {
            // Without a prefix the awslogs driver names streams by container id: not
            // derivable from the task, but still under the group.
            String::new()
        } else {
            format!("{}/{CONTAINER}/", self.stream_prefix)
        }
    }

    pub fn stream(&self, task_id: &str) -> String {
        format!("{}{task_id}", self.stream_name_prefix())
    }

    /// The task id a stream of ours belongs to.
    pub fn task_of<'a>(&self, stream: &'a str) -> Option<&'a str> {
        let rest = stream.strip_prefix(&self.stream_name_prefix())?;
        (!rest.is_empty() && !rest.contains('/')).then_some(rest)
    }
}

/// How `logs` prints lines: JSON lines (pass-through) or text for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    Json,
    Text,
}

/// Fields of backhaul's own JSON lines shown elsewhere in the text form, or noise there.
const HIDDEN: [&str; 8] = [
    "timestamp",
    "level",
    "message",
    "target",
    "_aws",
    "backup_success",
    "backup_failure",
    "backup_duration_seconds",
];

fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => s.clone(),
        other => other.to_string(),
    }
}

/// One log event as a line of output. JSON lines pass through unchanged in `Json`; a line
/// that is not JSON (a panic, the dump tool's stderr) is wrapped so the output stays JSON
/// lines. `Text` shows `<time> <LEVEL> <message> key=value...`.
pub fn render(ts_ms: i64, message: &str, how: Render) -> String {
    let message = message.trim_end_matches(['\n', '\r']);
    let parsed: Option<Map<String, Value>> = message
        .starts_with('{')
        .then(|| serde_json::from_str(message).ok())
        .flatten();
    match (how, parsed) {
        (Render::Json, Some(_)) => message.to_string(),
        (Render::Json, None) => json!({"timestamp": iso(ts_ms), "message": message}).to_string(),
        (Render::Text, None) => format!("{} {message}", iso(ts_ms)),
        (Render::Text, Some(obj)) => {
            let time = obj
                .get("timestamp")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| {
                    t.with_timezone(&Utc)
                        .to_rfc3339_opts(SecondsFormat::Secs, true)
                })
                .unwrap_or_else(|| iso(ts_ms));
            let mut out = time;
            if obj.get("event").and_then(Value::as_str) == Some("artifact") {
                let status = obj.get("status").and_then(Value::as_str).unwrap_or("?");
                out += &format!(
                    " {:<5} artifact {status}",
                    if status == "ok" { "INFO" } else { "ERROR" }
                );
            } else {
                let level = obj.get("level").and_then(Value::as_str).unwrap_or("-");
                out += &format!(" {level:<5}");
                if let Some(m) = obj.get("message").and_then(Value::as_str) {
                    out += " ";
                    out += m;
                }
            }
            for (k, v) in &obj {
                if !(HIDDEN.contains(&k.as_str()) || k == "event" || k == "status") {
                    out += &format!(" {k}={}", scalar(v));
                }
            }
            out
        }
    }
}

/// One run, summarised from its log stream (and from ECS while ECS still knows the task).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunSummary {
    pub task_id: String,
    pub log_stream: String,
    pub start: Option<String>,
    pub end: Option<String>,
    /// The container's exit code; `None` while running or once ECS has forgotten the task
    /// (it keeps stopped tasks for about an hour).
    pub exit_code: Option<i32>,
    /// `running`, `stopped`, or `unknown` (no longer listed by ECS).
    pub state: String,
    /// `ok` when every artifact line says ok, `failed` when one does not, `none` without any.
    pub outcome: String,
    pub artifacts: Vec<ArtifactLine>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ArtifactLine {
    pub key: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The per-artifact summary lines backhaul prints (see `report.rs`) among a stream's events.
pub fn artifacts(messages: &[&str]) -> Vec<ArtifactLine> {
    messages
        .iter()
        .filter(|m| m.starts_with('{'))
        .filter_map(|m| serde_json::from_str::<BTreeMap<String, Value>>(m).ok())
        .filter(|o| o.get("event").and_then(Value::as_str) == Some("artifact"))
        .map(|o| ArtifactLine {
            key: o
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            status: o
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            stored_bytes: o.get("stored_bytes").and_then(Value::as_u64),
            error: o.get("error").and_then(Value::as_str).map(str::to_string),
        })
        .collect()
}

pub fn outcome(artifacts: &[ArtifactLine]) -> &'static str {
    if artifacts.is_empty() {
        "none"
    } else if artifacts.iter().all(|a| a.status == "ok") {
        "ok"
    } else {
        "failed"
    }
}

pub fn summary_text(r: &RunSummary) -> String {
    let exit = r
        .exit_code
        .map_or_else(|| r.state.clone(), |c| format!("exit {c}"));
    let mut out = format!(
        "{} {} -> {} {exit} {} ({} artifacts)\n",
        r.task_id,
        r.start.as_deref().unwrap_or("?"),
        r.end.as_deref().unwrap_or("?"),
        r.outcome,
        r.artifacts.len()
    );
    for a in &r.artifacts {
        out += &format!("  {} {}", a.status, a.key);
        if let Some(b) = a.stored_bytes {
            out += &format!(" {b} bytes");
        }
        if let Some(e) = &a.error {
            out += &format!(": {e}");
        }
        out += "\n";
    }
    out
}

pub fn iso_millis(ms: Option<i64>) -> Option<String> {
    ms.map(iso)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::{ContainerDefinition, LogConfiguration, LogDriver};

    fn td(options: &[(&str, &str)]) -> TaskDefinition {
        let mut log = LogConfiguration::builder().log_driver(LogDriver::Awslogs);
        for (k, v) in options {
            log = log.options(*k, *v);
        }
        TaskDefinition::builder()
            .container_definitions(
                ContainerDefinition::builder()
                    .name(CONTAINER)
                    .log_configuration(log.build().unwrap())
                    .build(),
            )
            .build()
    }

    #[test]
    fn location_comes_from_the_task_definition() {
        let loc = LogLocation::of(&td(&[
            ("awslogs-group", "/custom/group"),
            ("awslogs-stream-prefix", "nightly"),
            ("awslogs-region", "eu-west-1"),
        ]))
        .unwrap();
        assert_eq!(loc.group, "/custom/group");
        assert_eq!(loc.region, "eu-west-1");
        assert_eq!(loc.stream("abc"), "nightly/backhaul/abc");
        assert_eq!(loc.task_of("nightly/backhaul/abc"), Some("abc"));
        assert_eq!(loc.task_of("other/backhaul/abc"), None);
        assert_eq!(loc.task_of("nightly/backhaul/"), None);
        assert_eq!(LogLocation::of(&td(&[])), None);
    }

    #[test]
    fn json_lines_pass_through_and_text_is_readable() {
        let line = r#"{"timestamp":"2026-12-03T02:00:01.123Z","level":"INFO","message":"backup done","target":"backhaul","database":"app","seconds":1.5}"#;
        assert_eq!(render(0, line, Render::Json), line);
        assert_eq!(
            render(0, line, Render::Text),
            "2026-12-03T02:00:01Z INFO  backup done database=app seconds=1.5"
        );
        let art = r#"{"event":"artifact","status":"failed","stage":"dev","key":"dev/x.dump.zst","seconds":2.0,"error":"pg_dump exited 1","backup_success":0,"_aws":{}}"#;
        assert_eq!(
            render(0, art, Render::Text),
            "1970-01-01T00:00:00Z ERROR artifact failed error=\"pg_dump exited 1\" key=dev/x.dump.zst seconds=2.0 stage=dev"
        );
        assert_eq!(
            render(1_000, "thread panicked\n", Render::Json),
            r#"{"message":"thread panicked","timestamp":"1970-01-01T00:00:01Z"}"#
        );
        assert_eq!(
            render(1_000, "plain", Render::Text),
            "1970-01-01T00:00:01Z plain"
        );
    }

    #[test]
    fn artifact_lines_make_the_outcome() {
        let msgs = [
            r#"{"level":"INFO","message":"x"}"#,
            r#"{"event":"artifact","status":"ok","key":"a","stored_bytes":10}"#,
            r#"{"event":"artifact","status":"failed","key":"b","error":"boom"}"#,
            "not json",
        ];
        let a = artifacts(&msgs);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].stored_bytes, Some(10));
        assert_eq!(a[1].error.as_deref(), Some("boom"));
        assert_eq!(outcome(&a), "failed");
        assert_eq!(outcome(&a[..1]), "ok");
        assert_eq!(outcome(&[]), "none");
    }
}
