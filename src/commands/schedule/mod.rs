//! `backhaul schedule` and `backhaul unschedule`: keep one ECS task definition family and one
//! EventBridge rule per stage in the state the flags (or the CloudFormation stack) describe.
//!
//! Everything the user typed is validated before the first AWS call (exit 2), so a typo never
//! leaves a half-updated schedule. Re-running with the same settings changes nothing: the
//! latest revision is reused when it already matches.

pub mod alarms;
pub mod scheduler;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context;
use aws_sdk_ecs::types::{TaskDefinition, TaskDefinitionStatus};
use serde_json::json;

use crate::aws::ecs::{family_of, revision_of, LogSpec, TaskSpec, EPHEMERAL_STORAGE_GIB};
use crate::aws::events::{rule_name, Network, RuleSpec, TargetSpec, TARGET_ID};
use crate::aws::{build_err, names, sdk_err, Clients};
use crate::cli::{ScheduleArgs, UnscheduleArgs};
use crate::commands::preflight;
use crate::config::{non_empty, ConfigError};

/// Schedule used when neither the flag nor the stack gives one: daily, 03:00 UTC.
const DEFAULT_SCHEDULE: &str = "cron(0 3 * * ? *)";

/// Substrings of variable names whose values must not sit in a task definition in plaintext.
const SECRET_NAME_MARKERS: [&str; 4] = ["PASSWORD", "SECRET", "TOKEN", "PRIVATE_KEY"];

/// Everything `schedule` will create, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    pub task: TaskSpec,
    pub rule: RuleSpec,
    pub cluster: String,
    pub events_role_arn: String,
    pub platform_version: String,
    pub network: Network,
}

/// Outputs of the CloudFormation stack made from infra/backhaul.yaml.
#[derive(Debug, Clone, Default)]
pub struct StackOutputs(pub HashMap<String, String>);

impl StackOutputs {
    pub fn get(&self, key: &str) -> Option<String> {
        non_empty(self.0.get(key).cloned())
    }
}

pub async fn run(a: ScheduleArgs) -> anyhow::Result<()> {
    let stack = match &a.from_stack {
        Some(name) => read_stack(name).await?,
        None => StackOutputs::default(),
    };
    let mut plan = resolve(&a, &stack)?;
    let (zoned, tz_warnings) = scheduler::resolve(&a, &mut plan, &stack)?;
    let alarms = alarms::resolve(
        &a,
        &stack,
        &plan,
        zoned.as_ref().map(|z| z.timezone.as_str()),
    )?;
    preflight::check(&plan.task)?;
    let mut warnings = unreadable_secrets(&plan.task, &stack, a.from_stack.as_deref());
    warnings.extend(tz_warnings);
    warnings.extend(alarms.as_ref().and_then(|p| p.note.clone()));
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let clients = Clients::load().await?;
    check_ssm_names(&clients, &plan.task.secrets).await?;
    if plan.task.log.region.is_empty() {
        plan.task.log.region = clients.region.clone();
    }
    if a.dry_run {
        let mut doc = dry_run_json(&plan);
        match &zoned {
            Some(z) => {
                doc = scheduler::dry_run_json(
                    &plan,
                    z,
                    plan.task.to_json(),
                    cluster_placeholder(&plan.cluster),
                )
            }
            None => doc["requests"]
                .as_array_mut()
                .expect("requests")
                .push(scheduler::rule_dry_run_extra(&plan)),
        }
        if let Some(p) = &alarms {
            doc["requests"]
                .as_array_mut()
                .expect("requests")
                .extend(alarms::dry_run_requests(p));
            doc["reads"]
                .as_array_mut()
                .expect("reads")
                .push(json!("cloudwatch:DescribeAlarms"));
        }
        if !warnings.is_empty() {
            doc["warnings"] = json!(warnings);
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let mut summary = match &zoned {
        Some(z) => scheduler::apply(&clients, &plan, z).await?,
        None => {
            let mut s = apply(&clients, &plan).await?;
            // Moving from a time-zone schedule: the rule is in place, the old one goes.
            if scheduler::remove_schedule(&clients, &plan.task.stage).await? {
                s["removed_schedule"] = json!(true);
                s["changed"] = json!(true);
            }
            s
        }
    };
    if let Some(p) = &alarms {
        let a = alarms::apply(&clients, p).await?;
        if a["alarm_changed"] == json!(true) {
            summary["changed"] = json!(true);
        }
        summary["alarms"] = a;
    }
    if !warnings.is_empty() {
        summary["warnings"] = json!(warnings);
    }
    println!("{summary}");
    Ok(())
}

/// Reads the stack's outputs; `--from-stack` needs them even for `--dry-run`.
pub async fn read_stack(name: &str) -> anyhow::Result<StackOutputs> {
    let conf = crate::storage::s3::sdk_config().await?;
    let cfn = aws_sdk_cloudformation::Client::new(&conf);
    let out = cfn
        .describe_stacks()
        .stack_name(name)
        .send()
        .await
        .map_err(|e| sdk_err("cloudformation:DescribeStacks", e))?;
    let stack = out
        .stacks()
        .first()
        .with_context(|| format!("CloudFormation stack {name} not found"))?;
    Ok(StackOutputs(
        stack
            .outputs()
            .iter()
            .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
            .collect(),
    ))
}

/// Turns flags (winning) and stack outputs into a plan. Pure apart from reading --env-file.
/// The log region is left empty when unknown; the caller fills it from the SDK.
pub fn resolve(a: &ScheduleArgs, stack: &StackOutputs) -> Result<Plan, ConfigError> {
    let stage =
        crate::config::scheduled_stage(non_empty(a.stage.clone()).or_else(|| stack.get("Stage")))?;
    let raw_schedule = non_empty(a.schedule.clone())
        .or_else(|| stack.get("ScheduleExpression"))
        .unwrap_or_else(|| DEFAULT_SCHEDULE.to_string());
    let schedule = crate::schedule_expr::parse(&raw_schedule)
        .map_err(|e| ConfigError::invalid("--schedule", e.to_string()))?;
    crate::fargate::validate(a.cpu, a.memory).map_err(fargate_err)?;
    let image = required(
        a.image.clone(),
        stack,
        "ImageUri",
        "--image",
        "the container image",
    )?;
    let network = resolve_network(a, stack)?;
    let execution_role_arn = required(
        a.execution_role_arn.clone(),
        stack,
        "TaskExecutionRoleArn",
        "--execution-role-arn",
        "the role ECS uses to pull the image, read secrets and write logs",
    )?;
    let events_role_arn = required(
        a.events_role_arn.clone(),
        stack,
        "EventsRoleArn",
        "--events-role-arn",
        "the role EventBridge uses to run the task",
    )?;
    let task_role_arn = required(
        a.task_role_arn.clone(),
        stack,
        "TaskRoleArn",
        "--task-role-arn",
        "the role the backup runs as (without one the task has no credentials for S3)",
    )?;
    for (arn, var) in [
        (&execution_role_arn, "--execution-role-arn"),
        (&task_role_arn, "--task-role-arn"),
        (&events_role_arn, "--events-role-arn"),
    ] {
        validate_role_arn(arn, var)?;
    }
    if let Some(g) = a.ephemeral_storage_gib {
        if !EPHEMERAL_STORAGE_GIB.contains(&g) {
            return Err(ConfigError::invalid(
                "--ephemeral-storage-gib",
                format!(
                    "{g} is out of range: Fargate takes {}-{} GiB (omit it for the default 20 GiB)",
                    EPHEMERAL_STORAGE_GIB.start(),
                    EPHEMERAL_STORAGE_GIB.end()
                ),
            ));
        }
    }
    let log_group = non_empty(a.log_group.clone())
        .or_else(|| stack.get("LogGroupName"))
        .unwrap_or_else(|| names::log_group(&stage));
    validate_log_group(&log_group)?;
    let command: Vec<String> = a.command.split_whitespace().map(str::to_string).collect();
    if command.is_empty() {
        return Err(ConfigError::invalid(
            "--command",
            "is empty: e.g. --command backup",
        ));
    }
    let task = TaskSpec {
        family: rule_name(&stage),
        cpu: a.cpu,
        memory: a.memory,
        image,
        command,
        env: resolve_env(a, stack, &stage)?,
        secrets: resolve_secrets(&a.secrets, stack)?,
        execution_role_arn,
        task_role_arn,
        ephemeral_storage_gib: a.ephemeral_storage_gib,
        log: LogSpec {
            group: log_group,
            region: non_empty(a.log_region.clone())
                .or_else(|| stack.get("Region"))
                .unwrap_or_default(),
            stream_prefix: a.log_stream_prefix.clone(),
        },
        stage: stage.clone(),
    };
    let cluster = non_empty(a.network.cluster.clone())
        .or_else(|| stack.get("ClusterName"))
        .unwrap_or_else(|| names::stage_resource(&stage));
    validate_cluster(&cluster)?;
    Ok(Plan {
        cluster,
        rule: RuleSpec::for_stage(&stage, schedule.to_string()),
        task,
        events_role_arn,
        platform_version: a.network.platform_version.clone(),
        network,
    })
}

/// Fargate's messages already start with the flag ("--cpu 1024 ..."); keep them verbatim.
fn fargate_err(e: crate::fargate::FargateError) -> ConfigError {
    let text = e.to_string();
    let (var, message) = text.split_once(' ').unwrap_or(("--cpu", text.as_str()));
    ConfigError::invalid(var, message)
}

fn required(
    flag: Option<String>,
    stack: &StackOutputs,
    output: &str,
    var: &str,
    what: &str,
) -> Result<String, ConfigError> {
    non_empty(flag)
        .or_else(|| stack.get(output))
        .ok_or_else(|| ConfigError::missing(var, format!("name {what} (or use --from-stack)")))
}

fn split_list(flag: &[String], stack: Option<String>) -> Vec<String> {
    let from_flag: Vec<String> = flag
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if !from_flag.is_empty() {
        return from_flag;
    }
    stack
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn resolve_network(a: &ScheduleArgs, stack: &StackOutputs) -> Result<Network, ConfigError> {
    let subnets = split_list(&a.network.subnets, stack.get("Subnets"));
    if subnets.is_empty() {
        return Err(ConfigError::missing(
            "--subnets",
            "name the task's subnets, e.g. --subnets subnet-0a1,subnet-0b2 (or use --from-stack)",
        ));
    }
    let security_groups = split_list(&a.network.security_groups, stack.get("SecurityGroups"));
    if security_groups.is_empty() {
        return Err(ConfigError::missing(
            "--security-groups",
            "name the task's security groups, e.g. --security-groups sg-0c3 (or use --from-stack)",
        ));
    }
    Ok(Network {
        subnets,
        security_groups,
        assign_public_ip: a.network.assign_public_ip
            || stack.get("AssignPublicIp").as_deref() == Some("ENABLED"),
    })
}

/// Stack's S3_BUCKET, then --env-file, then --env (later wins); STAGE is always the stage.
fn resolve_env(
    a: &ScheduleArgs,
    stack: &StackOutputs,
    stage: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut env = BTreeMap::new();
    if let Some(bucket) = stack.get("BucketName") {
        env.insert("S3_BUCKET".to_string(), bucket);
    }
    // The stack's task role may write only under <KeyPrefix>/<Stage>/, and can use only the
    // stack's KMS key: the task must be told both, or every run is denied.
    if let Some(prefix) = stack.get("KeyPrefix") {
        env.insert("BACKUP_PREFIX".to_string(), prefix);
    }
    if let Some(key) = stack.get("KmsKeyArn") {
        env.insert("S3_SSE".to_string(), "aws:kms".to_string());
        env.insert("S3_SSE_KMS_KEY_ID".to_string(), key);
    }
    if let Some(path) = &a.env_file {
        for (k, v) in read_env_file(path)? {
            check_plaintext(&k, &v, a.force_plaintext_env, "--env-file")?;
            env.insert(k, v);
        }
    }
    for item in &a.env {
        let (k, v) = parse_kv(item, "--env")?;
        check_plaintext(&k, &v, a.force_plaintext_env, "--env")?;
        env.insert(k, v);
    }
    env.insert("STAGE".to_string(), stage.to_string());
    check_stack_bounds(&env, stack)?;
    Ok(env)
}

/// The stack's task role may use only the stack's bucket, prefix and KMS key: a task
/// environment that points elsewhere would be denied on every run.
fn check_stack_bounds(
    env: &BTreeMap<String, String>,
    stack: &StackOutputs,
) -> Result<(), ConfigError> {
    if stack.0.is_empty() {
        return Ok(());
    }
    let bounds = [
        ("S3_BUCKET", "BucketName"),
        ("BACKUP_PREFIX", "KeyPrefix"),
        ("S3_SSE_KMS_KEY_ID", "KmsKeyArn"),
    ];
    for (var, output) in bounds {
        let want = stack.get(output);
        let got = non_empty(env.get(var).cloned());
        if got != want {
            let stack_says = want.map_or("none".to_string(), |w| format!("\"{w}\""));
            return Err(ConfigError::invalid(
                var,
                format!("{} differs from the stack's {output} ({stack_says}): the stack's task role is allowed only that; drop the --env/--env-file value or update the stack", got.map_or("(unset)".to_string(), |g| format!("\"{g}\""))),
            ));
        }
    }
    Ok(())
}

/// Splits `KEY=VALUE`; the name must be a portable environment variable name.
pub fn parse_kv(item: &str, var: &str) -> Result<(String, String), ConfigError> {
    let (k, v) = item.split_once('=').ok_or_else(|| {
        ConfigError::invalid(
            var,
            format!("{item:?} must be KEY=VALUE, e.g. {var} S3_BUCKET=acme-backups"),
        )
    })?;
    let k = k.trim();
    let valid = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(ConfigError::invalid(
            var,
            format!("{k:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Reads `KEY=VALUE` lines; `#` comments, blank lines, `export ` and matching quotes allowed.
fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::invalid("--env-file", format!("cannot read {}: {e}", path.display()))
    })?;
    parse_env_file(&text, &path.display().to_string())
}

pub fn parse_env_file(text: &str, name: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = parse_kv(line, &format!("--env-file {name}:{}", n + 1))?;
        out.push((k, unquote(v.trim()).to_string()));
    }
    Ok(out)
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

/// Refuses values that would leak a credential into the task definition, which anyone with
/// ecs:DescribeTaskDefinition can read; secrets belong in `--secret`.
fn check_plaintext(k: &str, v: &str, force: bool, var: &str) -> Result<(), ConfigError> {
    if force {
        return Ok(());
    }
    let upper = k.to_ascii_uppercase();
    let why = if SECRET_NAME_MARKERS.iter().any(|m| upper.contains(m)) {
        "looks like a secret"
    } else if url_has_password(v) {
        "holds a URL with a password"
    } else {
        return Ok(());
    };
    Err(ConfigError::invalid(
        var,
        format!("{k} {why}: store it in Secrets Manager or SSM and pass --secret {k}=<ARN> (or --force-plaintext-env)"),
    ))
}

/// `scheme://user:pass@host...`
pub fn url_has_password(v: &str) -> bool {
    let Some((_, rest)) = v.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => userinfo.contains(':'),
        None => false,
    }
}

/// Stack database secrets, then `--secret KEY=ARN` (later wins).
fn resolve_secrets(
    items: &[String],
    stack: &StackOutputs,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    if let Some(arn) = stack.get("PostgresSecretArn") {
        out.insert("POSTGRES_SECRET".to_string(), arn);
    }
    if let Some(arn) = stack.get("MongoSecretArn") {
        out.insert("MONGO_CONNECTION_STRING".to_string(), arn);
    }
    for item in items {
        let (k, v) = parse_kv(item, "--secret")?;
        validate_secret_arn(&k, &v)?;
        out.insert(k, v);
    }
    Ok(out)
}

/// A `--secret` value that is not an ARN names an SSM parameter, which must exist: a pasted
/// password is a valid parameter name too, and would be registered in the task definition
/// for anyone with ecs:DescribeTaskDefinition to read. Looked up by name (DescribeParameters
/// returns metadata only: the value is never fetched). Exit 2, nothing registered.
async fn check_ssm_names(
    clients: &Clients,
    secrets: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    use aws_sdk_ssm::types::ParameterStringFilter;
    for (k, v) in secrets.iter().filter(|(_, v)| !v.starts_with("arn:")) {
        let filter = ParameterStringFilter::builder()
            .key("Name")
            .option("Equals")
            .values(v)
            .build()
            .map_err(|e| anyhow::anyhow!("building AWS request: {e}"))?;
        let found = clients
            .ssm
            .describe_parameters()
            .parameter_filters(filter)
            .send()
            .await
            .map_err(|e| sdk_err("ssm:DescribeParameters", e))?;
        if found.parameters().is_empty() {
            return Err(ConfigError::invalid(
                "--secret",
                format!("{k}=<value> is not the name of an SSM parameter in {} (the value is not shown): store the secret in Secrets Manager or SSM and pass its ARN or parameter name", clients.region),
            )
            .into());
        }
    }
    Ok(())
}

/// The `valueFrom` forms the ECS agent resolves (ECS developer guide, "Pass sensitive data to
/// an Amazon ECS container"): a Secrets Manager secret ARN, alone or followed by exactly
/// `:<json-key>:<version-stage>:<version-id>` (each may be empty); an SSM parameter ARN; or
/// the name of an SSM parameter in the task's region. Anything else registers fine and fails
/// when the task starts, every night.
pub fn validate_secret_arn(k: &str, v: &str) -> Result<(), ConfigError> {
    let problem = match secret_ref_problem(v) {
        None => return Ok(()),
        Some(p) => p,
    };
    Err(ConfigError::invalid(
        "--secret",
        // The value is not echoed: someone who pasted the secret itself instead of its ARN
        // must not find it in the task's logs.
        format!("{k}=<value> {problem} (the value is not shown), e.g. {k}=arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf, {k}=arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf:password:: or {k}=arn:aws:ssm:us-east-1:123456789012:parameter/prod/db-password"),
    ))
}

fn secret_ref_problem(v: &str) -> Option<String> {
    const NOT_A_REF: &str =
        "must be a Secrets Manager secret ARN, an SSM parameter ARN or an SSM parameter name";
    let Some(rest) = v.strip_prefix("arn:") else {
        return (!is_ssm_name(v)).then(|| NOT_A_REF.to_string());
    };
    let parts: Vec<&str> = rest.splitn(5, ':').collect();
    let [partition, service, region, account, resource] = parts[..] else {
        return Some(NOT_A_REF.to_string());
    };
    let partition_ok = partition == "aws"
        || partition.strip_prefix("aws-").is_some_and(|p| {
            !p.is_empty() && p.bytes().all(|c| c.is_ascii_lowercase() || c == b'-')
        });
    let region_ok = !region.is_empty()
        && region
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    let account_ok = account.len() == 12 && account.bytes().all(|c| c.is_ascii_digit());
    if !(partition_ok && region_ok && account_ok) {
        return Some(format!(
            "{NOT_A_REF} (arn:<partition>:<service>:<region>:<12-digit account>:...)"
        ));
    }
    match service {
        "secretsmanager" => {
            let Some(id) = resource.strip_prefix("secret:") else {
                return Some("is a Secrets Manager ARN without secret:<name>".to_string());
            };
            let fields: Vec<&str> = id.split(':').collect();
            let name_ok = !fields[0].is_empty()
                && fields[0]
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"/_+=.@-".contains(&c));
            if !name_ok {
                return Some("is a Secrets Manager ARN with an invalid secret name".to_string());
            }
            match fields.len() {
                1 | 4 => None,
                n => Some(format!("is a Secrets Manager ARN with {} field(s) after the secret name: ECS takes the ARN alone or followed by exactly :<json-key>:<version-stage>:<version-id> (each may be empty)", n - 1)),
            }
        }
        "ssm" => match resource.strip_prefix("parameter") {
            Some(name) if name.starts_with('/') && is_ssm_name(name) => None,
            _ => Some("is an SSM ARN that is not parameter/<name>".to_string()),
        },
        _ => Some(NOT_A_REF.to_string()),
    }
}

/// SSM parameter names: letters, digits and `_.-`, in `/`-separated levels; `aws` and `ssm`
/// prefixes are reserved (SSM PutParameter documentation).
fn is_ssm_name(v: &str) -> bool {
    let levels: Vec<&str> = v.strip_prefix('/').unwrap_or(v).split('/').collect();
    let reserved = {
        let first = levels[0].to_ascii_lowercase();
        first.starts_with("aws") || first.starts_with("ssm")
    };
    !v.is_empty()
        && v.len() <= 2048
        && !reserved
        && levels.iter().all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
        })
}

/// `arn:<partition>:iam::<account>:role/<path/name>`: a role name elsewhere is a typo that
/// ECS or EventBridge would reject only when the schedule first fires.
fn validate_role_arn(arn: &str, var: &str) -> Result<(), ConfigError> {
    let ok = arn.strip_prefix("arn:").is_some_and(|rest| {
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        matches!(parts[..], [p, "iam", "", account, res]
            if p.starts_with("aws")
                && account.len() == 12
                && account.bytes().all(|c| c.is_ascii_digit())
                && res.strip_prefix("role/").is_some_and(|n| !n.is_empty()))
    });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            var,
            format!("\"{arn}\" is not an IAM role ARN, e.g. arn:aws:iam::123456789012:role/backhaul-task"),
        ))
    }
}

/// CloudWatch log group names: 1-512 of `[.\-_/#A-Za-z0-9]` (CloudWatch Logs API).
fn validate_log_group(g: &str) -> Result<(), ConfigError> {
    let ok = (1..=512).contains(&g.len())
        && g.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-_/#".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "--log-group",
            format!("\"{g}\" is not a log group name (1-512 of letters, digits and . - _ / #)"),
        ))
    }
}

/// Cluster names: 1-255 letters, digits, `-` and `_` (ECS CreateCluster), or a cluster ARN.
fn validate_cluster(c: &str) -> Result<(), ConfigError> {
    let ok = c.starts_with("arn:")
        || ((1..=255).contains(&c.len())
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "--cluster",
            format!("\"{c}\" is not an ECS cluster name (letters, digits, - and _) or ARN"),
        ))
    }
}

/// With `--from-stack`, the stack's execution role may read exactly the secrets given to the
/// stack; any other `--secret` fails when the task starts unless someone granted it by hand.
fn unreadable_secrets(
    task: &TaskSpec,
    stack: &StackOutputs,
    from_stack: Option<&str>,
) -> Vec<String> {
    let Some(name) = from_stack else {
        return Vec::new();
    };
    let readable: Vec<String> = ["PostgresSecretArn", "MongoSecretArn"]
        .iter()
        .filter_map(|k| stack.get(k))
        .collect();
    task.secrets
        .iter()
        .filter(|(_, v)| !readable.iter().any(|r| r == *v))
        .map(|(k, _)| format!("secret {k} is not one the execution role of stack {name} can read (it can read only the stack's PostgresSecretArn and MongoSecretArn): grant secretsmanager:GetSecretValue or ssm:GetParameters on it, or the task will fail to start"))
        .collect()
}

fn dry_run_json(plan: &Plan) -> serde_json::Value {
    let target = TargetSpec {
        cluster_arn: cluster_placeholder(&plan.cluster),
        task_definition_arn: format!("<{}:new or unchanged revision>", plan.task.family),
        role_arn: plan.events_role_arn.clone(),
        platform_version: plan.platform_version.clone(),
        network: plan.network.clone(),
    };
    // The writes in the order `apply` sends them, each with its input in the API's own JSON
    // spelling; ARNs not known before the first write are shown as <placeholders>.
    json!({
        "requests": [
            {
                "operation": "ecs:RegisterTaskDefinition",
                "when": "unless the family's latest active revision already matches",
                "input": plan.task.to_json(),
            },
            {"operation": "events:PutRule", "input": plan.rule.to_json()},
            {
                "operation": "events:PutTargets",
                "input": {"Rule": plan.rule.name, "Targets": [target.to_json()]},
            },
            {
                "operation": "events:RemoveTargets",
                "when": "only for targets other than the rule's own (id backhaul)",
                "input": {"Rule": plan.rule.name, "Ids": ["<other target ids>"]},
            },
        ],
        "reads": [
            "ecs:DescribeClusters",
            "ecs:ListTaskDefinitions",
            "ecs:DescribeTaskDefinition",
            "events:ListTargetsByRule",
        ],
    })
}

fn cluster_placeholder(cluster: &str) -> String {
    if cluster.starts_with("arn:") {
        cluster.to_string()
    } else {
        format!("<ARN of ECS cluster {cluster}>")
    }
}

/// Registers (if needed), puts the rule and its one target, and returns the JSON summary.
async fn apply(c: &Clients, plan: &Plan) -> anyhow::Result<serde_json::Value> {
    let cluster_arn = cluster_arn(&c.ecs, &plan.cluster).await?;
    let (td, changed) = ensure_task_definition(&c.ecs, &plan.task).await?;
    let td_arn = td.task_definition_arn().unwrap_or_default().to_string();
    let rule_arn = c
        .events
        .put_rule()
        .name(&plan.rule.name)
        .schedule_expression(&plan.rule.schedule)
        .state(aws_sdk_eventbridge::types::RuleState::Enabled)
        .description(&plan.rule.description)
        .send()
        .await
        .map_err(|e| sdk_err("events:PutRule", e))?
        .rule_arn()
        .unwrap_or_default()
        .to_string();
    let target = TargetSpec {
        cluster_arn,
        task_definition_arn: td_arn.clone(),
        role_arn: plan.events_role_arn.clone(),
        platform_version: plan.platform_version.clone(),
        network: plan.network.clone(),
    };
    put_target(c, &plan.rule.name, &target).await?;
    Ok(json!({
        "rule_arn": rule_arn,
        "task_definition_arn": td_arn,
        "revision": td.revision(),
        "changed": changed,
    }))
}

/// EventBridge needs the cluster ARN; looking it up also proves the cluster exists.
pub(crate) async fn cluster_arn(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
) -> anyhow::Result<String> {
    if cluster.starts_with("arn:") {
        return Ok(cluster.to_string());
    }
    let out = ecs
        .describe_clusters()
        .clusters(cluster)
        .send()
        .await
        .map_err(|e| sdk_err("ecs:DescribeClusters", e))?;
    out.clusters()
        .iter()
        .find(|c| c.status() != Some("INACTIVE"))
        .and_then(|c| c.cluster_arn())
        .map(str::to_string)
        .with_context(|| {
            format!("ECS cluster {cluster} does not exist: create it (infra/backhaul.yaml) or pass --cluster")
        })
}

/// Reuses the latest active revision when it matches; otherwise registers a new one.
pub(crate) async fn ensure_task_definition(
    ecs: &aws_sdk_ecs::Client,
    spec: &TaskSpec,
) -> anyhow::Result<(TaskDefinition, bool)> {
    if let Some(existing) = latest_active(ecs, &spec.family).await? {
        if spec.matches(&existing) {
            return Ok((existing, false));
        }
    }
    let out = spec
        .register(ecs)
        .map_err(build_err)?
        .send()
        .await
        .map_err(|e| sdk_err("ecs:RegisterTaskDefinition", e))?;
    let td = out
        .task_definition()
        .cloned()
        .context("RegisterTaskDefinition returned no task definition")?;
    Ok((td, true))
}

/// ARNs of the family's ACTIVE revisions, oldest first.
pub async fn active_revisions(
    ecs: &aws_sdk_ecs::Client,
    family: &str,
) -> anyhow::Result<Vec<String>> {
    let mut arns = Vec::new();
    let mut pages = ecs
        .list_task_definitions()
        .family_prefix(family)
        .status(TaskDefinitionStatus::Active)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| sdk_err("ecs:ListTaskDefinitions", e))?;
        arns.extend(
            page.task_definition_arns()
                .iter()
                .filter(|a| family_of(a) == Some(family))
                .cloned(),
        );
    }
    arns.sort_by_key(|a| revision_of(a));
    Ok(arns)
}

/// The family's newest ACTIVE revision, if any.
pub async fn latest_active(
    ecs: &aws_sdk_ecs::Client,
    family: &str,
) -> anyhow::Result<Option<TaskDefinition>> {
    let Some(arn) = active_revisions(ecs, family).await?.pop() else {
        return Ok(None);
    };
    let out = ecs
        .describe_task_definition()
        .task_definition(&arn)
        .send()
        .await
        .map_err(|e| sdk_err("ecs:DescribeTaskDefinition", e))?;
    Ok(out.task_definition().cloned())
}

/// Puts our target, then removes any other target, so the rule starts exactly one task.
async fn put_target(c: &Clients, rule: &str, target: &TargetSpec) -> anyhow::Result<()> {
    let out = c
        .events
        .put_targets()
        .rule(rule)
        .targets(target.target().map_err(build_err)?)
        .send()
        .await
        .map_err(|e| sdk_err("events:PutTargets", e))?;
    failed_entries("events:PutTargets", out.failed_entries())?;
    let others: Vec<String> = target_ids(c, rule)
        .await?
        .into_iter()
        .filter(|id| id != TARGET_ID)
        .collect();
    remove_targets(c, rule, others).await
}

/// Target ids of a rule; a missing rule has none.
pub async fn target_ids(c: &Clients, rule: &str) -> anyhow::Result<Vec<String>> {
    Ok(targets(c, rule)
        .await?
        .iter()
        .map(|t| t.id().to_string())
        .collect())
}

/// Targets of a rule; a missing rule has none.
pub async fn targets(
    c: &Clients,
    rule: &str,
) -> anyhow::Result<Vec<aws_sdk_eventbridge::types::Target>> {
    match c.events.list_targets_by_rule().rule(rule).send().await {
        Ok(out) => Ok(out.targets().to_vec()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(sdk_err("events:ListTargetsByRule", e)),
    }
}

/// Removes targets; a partial failure is an error, so a rule is never deleted (or left
/// "clean") while a target it should have lost is still attached.
pub(crate) async fn remove_targets(
    c: &Clients,
    rule: &str,
    ids: Vec<String>,
) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let out = c
        .events
        .remove_targets()
        .rule(rule)
        .set_ids(Some(ids))
        .send()
        .await
        .map_err(|e| sdk_err("events:RemoveTargets", e))?;
    failed_entries("events:RemoveTargets", out.failed_entries())
}

/// PutTargets and RemoveTargets answer 200 with per-target failures; those are errors too.
pub(crate) fn failed_entries<T: FailedEntry>(operation: &str, entries: &[T]) -> anyhow::Result<()> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    Err(crate::aws::error::AwsError {
        operation: operation.to_string(),
        code: first.code().unwrap_or("FailedEntry").to_string(),
        message: format!(
            "target {}: {} ({} of the targets failed)",
            first.id().unwrap_or("?"),
            first.message().unwrap_or_default(),
            entries.len()
        ),
        hint: None,
    }
    .into())
}

/// The two failed-entry types EventBridge returns share these fields.
pub(crate) trait FailedEntry {
    fn id(&self) -> Option<&str>;
    fn code(&self) -> Option<&str>;
    fn message(&self) -> Option<&str>;
}

macro_rules! failed_entry {
    ($t:ty) => {
        impl FailedEntry for $t {
            fn id(&self) -> Option<&str> {
                self.target_id()
            }
            fn code(&self) -> Option<&str> {
                self.error_code()
            }
            fn message(&self) -> Option<&str> {
                self.error_message()
            }
        }
    };
}
failed_entry!(aws_sdk_eventbridge::types::PutTargetsResultEntry);
failed_entry!(aws_sdk_eventbridge::types::RemoveTargetsResultEntry);

pub async fn unschedule(a: UnscheduleArgs) -> anyhow::Result<()> {
    let stage = crate::config::scheduled_stage(a.stage.clone())?;
    let c = Clients::load().await?;
    let rule = rule_name(&stage);
    let ids = target_ids(&c, &rule).await?;
    let removed = ids.len();
    remove_targets(&c, &rule, ids).await?;
    match c.events.delete_rule().name(&rule).send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) => {}
        Err(e) => return Err(sdk_err("events:DeleteRule", e)),
    }
    let removed_schedule = scheduler::remove_schedule(&c, &stage).await?;
    let (removed_alarm, removed_failure_rule) = alarms::remove(&c, &stage).await?;
    let mut deregistered = Vec::new();
    if a.deregister {
        for arn in active_revisions(&c.ecs, &rule).await? {
            c.ecs
                .deregister_task_definition()
                .task_definition(&arn)
                .send()
                .await
                .map_err(|e| sdk_err("ecs:DeregisterTaskDefinition", e))?;
            deregistered.push(arn);
        }
    }
    println!(
        "{}",
        json!({"rule": rule, "removed_targets": removed, "removed_schedule": removed_schedule, "removed_alarm": removed_alarm, "removed_failure_rule": removed_failure_rule, "deregistered": deregistered})
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_env_is_refused_unless_forced() {
        let e = check_plaintext("DB_PASSWORD", "x", false, "--env").unwrap_err();
        assert_eq!(e.to_string(), "--env DB_PASSWORD looks like a secret: store it in Secrets Manager or SSM and pass --secret DB_PASSWORD=<ARN> (or --force-plaintext-env)");
        assert!(check_plaintext("DATABASE_URL", "postgres://u:p@h/db", false, "--env").is_err());
        assert!(check_plaintext("DATABASE_URL", "postgres://u@h/db", false, "--env").is_ok());
        assert!(check_plaintext("DB_PASSWORD", "x", true, "--env").is_ok());
        assert!(check_plaintext("S3_BUCKET", "b", false, "--env").is_ok());
    }

    #[test]
    fn env_file_syntax() {
        let got = parse_env_file("# c\n\nA=1\nexport B=\"two words\"\nC='x=y'\n", "f.env").unwrap();
        assert_eq!(
            got,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into())
            ]
        );
        let e = parse_env_file("A=1\nnope\n", "f.env").unwrap_err();
        assert!(e.to_string().starts_with("--env-file f.env:2 "), "{e}");
    }

    #[test]
    fn secret_value_from_forms_ecs_accepts() {
        let sm = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf";
        for ok in [
            sm.to_string(),
            format!("{sm}:password::"),
            format!("{sm}:password:AWSCURRENT:"),
            format!("{sm}:::0f1e2d3c"),
            "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:x-AbC".to_string(),
            "arn:aws:ssm:us-east-1:123456789012:parameter/prod/db-password".to_string(),
            "/prod/db-password".to_string(),
            "db_password".to_string(),
        ] {
            assert!(validate_secret_arn("P", &ok).is_ok(), "{ok}");
        }
        let other = "arn:aws:secretsmanager:eu-west-1:210987654321:secret:app-XyZ";
        for (bad, why) in [
            (
                format!("{other}:password"),
                "with 1 field(s) after the secret name",
            ),
            (format!("{other}:password:AWSCURRENT"), "with 2 field(s)"),
            (format!("{other}:a:b:c:d"), "with 4 field(s)"),
            (
                "arn:aws:secretsmanager:us-east-1:1:secret:x".to_string(),
                "12-digit account",
            ),
            (
                "arn:aws:ssm:us-east-1:123456789012:db-password".to_string(),
                "not parameter/<name>",
            ),
            ("arn:aws:s3:::bucket".to_string(), "12-digit account"),
            (
                "arn:aws:s3:us-east-1:123456789012:bucket".to_string(),
                "must be a Secrets Manager",
            ),
            ("hunter2!".to_string(), "must be a Secrets Manager"),
            ("aws/reserved".to_string(), "must be a Secrets Manager"),
            (
                "{\"password\":\"x\"}".to_string(),
                "must be a Secrets Manager",
            ),
        ] {
            let e = validate_secret_arn("P", &bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains(&bad), "the value is never echoed: {e}");
        }
    }

    #[test]
    fn role_arns() {
        assert!(validate_role_arn("arn:aws:iam::123456789012:role/x", "--task-role-arn").is_ok());
        assert!(validate_role_arn("arn:aws:iam::123456789012:role/path/x", "--x").is_ok());
        assert_eq!(
            validate_role_arn("backhaul-task", "--task-role-arn").unwrap_err().to_string(),
            "--task-role-arn \"backhaul-task\" is not an IAM role ARN, e.g. arn:aws:iam::123456789012:role/backhaul-task"
        );
        assert!(validate_role_arn("arn:aws:iam::123456789012:user/x", "--x").is_err());
    }
}
