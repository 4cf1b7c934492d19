//! `schedule`'s preflight: would the task's configuration make a valid backup?
//!
//! The check runs the very code the task will run: this binary's own `backup --dry-run`, with
//! an empty environment holding exactly the task definition's variables, and a stand-in value
//! for each secret (a secret counts as present; its content is unknown here). `--dry-run`
//! resolves and validates every setting and contacts nothing. Reimplementing the rules here
//! would drift from them; spawning ourselves cannot.
//!
//! The stand-ins are fixed strings, never a real secret, so nothing sensitive reaches the
//! child's environment or argv.

use std::process::Stdio;

use crate::aws::ecs::TaskSpec;
use crate::config::ConfigError;

/// Stand-in values by secret name, shaped like what the secret must hold for the variable
/// to parse. Unknown names get a plain word.
fn stand_in(name: &str) -> &'static str {
    match name {
        "POSTGRES_SECRET" => {
            r#"{"username":"preflight","password":"preflight","host":"preflight.invalid","port":5432,"dbname":"preflight"}"#
        }
        "DATABASE_URL" => "postgresql://preflight:preflight@preflight.invalid:5432/preflight",
        "MONGO_CONNECTION_STRING" => {
            "mongodb://preflight:preflight@preflight.invalid:27017/preflight"
        }
        "BACKHAUL_NOTIFY_URL" => "https://preflight.invalid/ping",
        _ => "preflight",
    }
}

/// Refuses (exit 2) a task whose `backup` would fail on configuration every night. Commands
/// other than `backup` are not checked (their configuration depends on arguments of the day).
pub fn check(task: &TaskSpec) -> Result<(), ConfigError> {
    if task.command.first().map(String::as_str) != Some("backup") {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| {
        ConfigError::invalid("schedule", format!("cannot run the preflight check: {e}"))
    })?;
    let mut cmd = std::process::Command::new(exe);
    cmd.env_clear()
        .envs(&task.env)
        .envs(task.secrets.keys().map(|k| (k, stand_in(k))))
        .env("BACKHAUL_LOG_FORMAT", "text")
        .args(&task.command)
        .arg("--dry-run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = cmd.output().map_err(|e| {
        ConfigError::invalid("schedule", format!("cannot run the preflight check: {e}"))
    })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reason = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| stderr.trim())
        .to_string();
    Err(ConfigError::invalid(
        "task configuration",
        format!("would fail every scheduled run: `{}` says: {reason} — set it with --env, --env-file or --secret", task.command.join(" ")),
    ))
}
