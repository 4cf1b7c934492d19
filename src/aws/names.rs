//! Every AWS name backhaul derives from a stage, checked against its service's limit up
//! front. A stage that fits the S3 key segment (200 characters) can still overflow a rule
//! name; finding that out at PutRule, after the task definition was registered, leaves a
//! half-applied schedule.

use crate::config::{self, non_empty, ConfigError};

const PREFIX: &str = "backhaul-";

/// EventBridge rule names and Scheduler schedule names: at most 64 characters
/// (`[\.\-_A-Za-z0-9]+`). The tightest of the derived names, so it bounds the stage.
pub const MAX_RULE_NAME: usize = 64;

/// Longest stage whose derived names all fit: `backhaul-` + stage ≤ 64.
pub const MAX_STAGE: usize = MAX_RULE_NAME - PREFIX.len();

/// The stage named by `--stage`/`STAGE` for a command that creates or reads ECS and
/// EventBridge resources: present, well-formed and short enough for every derived name.
pub fn scheduled_stage(stage: Option<String>) -> Result<String, ConfigError> {
    let stage = non_empty(stage)
        .ok_or_else(|| ConfigError::missing("--stage", "name the stage (e.g. --stage prod)"))?;
    check_stage(&stage, "--stage")?;
    Ok(stage)
}

/// Checks a stage for scheduling; `var` names where it came from. The rule is every
/// command's ([`config::validate_stage`], which holds the length limit too).
pub fn check_stage(stage: &str, var: &str) -> Result<(), ConfigError> {
    config::validate_stage(stage, var)
}

/// Task definition family, EventBridge rule (and Scheduler schedule), ECS cluster and
/// CloudFormation stack share one name per stage.
pub fn stage_resource(stage: &str) -> String {
    format!("{PREFIX}{stage}")
}

/// The default CloudWatch log group of a stage.
pub fn log_group(stage: &str) -> String {
    format!("/backhaul/{stage}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_stage_fits_every_name() {
        let stage = "a".repeat(MAX_STAGE);
        assert!(check_stage(&stage, "--stage").is_ok());
        assert_eq!(stage_resource(&stage).len(), MAX_RULE_NAME);
        let e = check_stage(&format!("{stage}b"), "--stage").unwrap_err();
        assert_eq!(e.to_string(), format!("--stage \"{stage}b\" is 56 characters: a stage has at most 55, so that the rule name backhaul-<stage> fits EventBridge's 64"));
    }

    #[test]
    fn missing_and_malformed() {
        assert_eq!(
            scheduled_stage(Some(" ".into())).unwrap_err().to_string(),
            "--stage is not set: name the stage (e.g. --stage prod)"
        );
        assert!(scheduled_stage(Some("Prod".into())).is_err());
        assert_eq!(scheduled_stage(Some("prod".into())).unwrap(), "prod");
    }
}
