//! `schedule`, `unschedule`, `run-task` and `status` through the real binary against moto,
//! inspected with the real SDK. Every test uses its own stage, so they share one moto_server.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{
    Compatibility, LogDriver, NetworkMode, TaskDefinition, TaskDefinitionStatus,
};

use crate::common::contract::{check_records, json_request, Contract};
use crate::common::{backhaul, block_on, moto, summaries, tests_dir};

const EXEC_ROLE: &str = "arn:aws:iam::123456789012:role/backhaul-exec";
const TASK_ROLE: &str = "arn:aws:iam::123456789012:role/backhaul-task";
const EVENTS_ROLE: &str = "arn:aws:iam::123456789012:role/backhaul-events";
const PG_SECRET: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:dev/db-AbCdEf";

/// Runs a boto3 snippet against moto (EC2, Secrets Manager and moto's own API have no Rust
/// client among our dependencies); returns its stdout.
pub(crate) fn py(script: &str) -> String {
    let prelude = "import boto3, json, os, sys, urllib.request\n\
        def client(s): return boto3.client(s, endpoint_url=os.environ['E'], region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n";
    let out = Command::new(crate::common::venv().join("bin/python"))
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .env("E", &moto().endpoint)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Two subnets and the default security group of moto's default VPC.
pub(crate) fn network() -> &'static (String, String) {
    static N: OnceLock<(String, String)> = OnceLock::new();
    N.get_or_init(|| {
        let out = py("ec2 = client('ec2')\n\
            vpc = [v for v in ec2.describe_vpcs()['Vpcs'] if v['IsDefault']][0]['VpcId']\n\
            subs = [s['SubnetId'] for s in ec2.describe_subnets(Filters=[{'Name': 'vpc-id', 'Values': [vpc]}])['Subnets']]\n\
            sg = ec2.describe_security_groups(Filters=[{'Name': 'vpc-id', 'Values': [vpc]}, {'Name': 'group-name', 'Values': ['default']}])['SecurityGroups'][0]['GroupId']\n\
            print(','.join(sorted(subs)[:2])); print(sg)");
        let (subnets, sg) = out.split_once('\n').unwrap();
        assert!(subnets.starts_with("subnet-") && sg.starts_with("sg-"), "{out}");
        (subnets.to_string(), sg.to_string())
    })
}

pub(crate) fn ecs() -> aws_sdk_ecs::Client {
    aws_sdk_ecs::Client::new(&moto().sdk_config())
}

pub(crate) fn events() -> aws_sdk_eventbridge::Client {
    aws_sdk_eventbridge::Client::new(&moto().sdk_config())
}

pub(crate) fn stage(hint: &str) -> String {
    format!("{hint}-{}", std::process::id())
}

pub(crate) fn create_cluster(name: &str) -> String {
    block_on(ecs().create_cluster().cluster_name(name).send())
        .unwrap()
        .cluster()
        .unwrap()
        .cluster_arn()
        .unwrap()
        .to_string()
}

/// `backhaul schedule` with every required flag, against moto through the recorder.
pub(crate) fn schedule(rec: &Contract, stage: &str) -> assert_cmd::Command {
    let (subnets, sg) = network();
    let mut cmd = rec.backhaul();
    cmd.args([
        "schedule",
        "--stage",
        stage,
        "--schedule",
        "cron(0 3 * * ? *)",
    ])
    .args([
        "--image",
        "backhaul:test",
        "--subnets",
        subnets,
        "--security-groups",
        sg,
    ])
    .args([
        "--execution-role-arn",
        EXEC_ROLE,
        "--task-role-arn",
        TASK_ROLE,
    ])
    .args(["--events-role-arn", EVENTS_ROLE])
    .args(["--env", "S3_BUCKET=acme", "--env", "BACKUP_PARALLEL=2"])
    .args(["--secret", &format!("POSTGRES_SECRET={PG_SECRET}")]);
    cmd
}

pub(crate) fn summary(cmd: &mut assert_cmd::Command) -> serde_json::Value {
    let out = cmd.assert().success().get_output().stdout.clone();
    summaries(&out).pop().expect("a JSON summary on stdout")
}

pub(crate) fn task_definition(family_or_arn: &str) -> TaskDefinition {
    block_on(
        ecs()
            .describe_task_definition()
            .task_definition(family_or_arn)
            .send(),
    )
    .unwrap()
    .task_definition()
    .unwrap()
    .clone()
}

pub(crate) fn targets(rule: &str) -> Vec<aws_sdk_eventbridge::types::Target> {
    block_on(events().list_targets_by_rule().rule(rule).send())
        .unwrap()
        .targets()
        .to_vec()
}

fn active_revisions(family: &str) -> Vec<String> {
    block_on(
        ecs()
            .list_task_definitions()
            .family_prefix(family)
            .status(TaskDefinitionStatus::Active)
            .send(),
    )
    .unwrap()
    .task_definition_arns()
    .to_vec()
}

#[test]
fn schedule_registers_task_definition_rule_and_target() {
    let stage = stage("sched");
    let family = format!("backhaul-{stage}");
    let cluster_arn = create_cluster(&family);
    let rec = Contract::start();
    let s = summary(&mut schedule(&rec, &stage));
    assert_eq!(s["changed"], true);
    assert_eq!(s["revision"], 1);

    let td = task_definition(&family);
    assert_eq!(td.task_definition_arn(), s["task_definition_arn"].as_str());
    assert_eq!(td.requires_compatibilities(), [Compatibility::Fargate]);
    assert_eq!(td.network_mode(), Some(&NetworkMode::Awsvpc));
    assert_eq!((td.cpu(), td.memory()), (Some("512"), Some("1024")));
    assert_eq!(td.execution_role_arn(), Some(EXEC_ROLE));
    assert_eq!(td.task_role_arn(), Some(TASK_ROLE));
    let [c] = td.container_definitions() else {
        panic!("one container")
    };
    assert_eq!(c.name(), Some("backhaul"));
    assert_eq!(c.image(), Some("backhaul:test"));
    assert_eq!(c.essential(), Some(true));
    assert_eq!(c.command(), ["backup"]);
    assert_eq!(c.memory(), Some(1024));
    assert_eq!(c.stop_timeout(), Some(120));
    let env: Vec<(&str, &str)> = c
        .environment()
        .iter()
        .map(|kv| (kv.name().unwrap(), kv.value().unwrap()))
        .collect();
    assert_eq!(
        env,
        [
            ("BACKUP_PARALLEL", "2"),
            ("S3_BUCKET", "acme"),
            ("STAGE", stage.as_str())
        ]
    );
    let secrets: Vec<(&str, &str)> = c
        .secrets()
        .iter()
        .map(|s| (s.name(), s.value_from()))
        .collect();
    assert_eq!(secrets, [("POSTGRES_SECRET", PG_SECRET)]);
    let log = c
        .log_configuration()
        .expect("moto returns logConfiguration");
    assert_eq!(log.log_driver(), &LogDriver::Awslogs);
    let opts = log.options().unwrap();
    assert_eq!(opts["awslogs-group"], format!("/backhaul/{stage}"));
    assert_eq!(opts["awslogs-region"], "us-east-1");
    assert_eq!(opts["awslogs-stream-prefix"], "backhaul");
    // Real ECS refuses any value but "true" for this option: it must be absent.
    assert_eq!(opts.len(), 3, "{opts:?}");
    assert!(td.ephemeral_storage().is_none());

    let rule = block_on(events().describe_rule().name(&family).send()).unwrap();
    assert_eq!(rule.schedule_expression(), Some("cron(0 3 * * ? *)"));
    assert_eq!(rule.state().map(|s| s.as_str()), Some("ENABLED"));
    assert_eq!(rule.arn(), s["rule_arn"].as_str());
    assert_eq!(
        rule.description(),
        Some(format!("backhaul backups for stage {stage}").as_str())
    );

    let ts = targets(&family);
    let [t] = ts.as_slice() else {
        panic!("one target: {ts:?}")
    };
    assert_eq!(t.id(), "backhaul");
    assert_eq!(t.arn(), cluster_arn);
    assert_eq!(t.role_arn(), Some(EVENTS_ROLE));
    let p = t.ecs_parameters().expect("moto returns EcsParameters");
    assert_eq!(Some(p.task_definition_arn()), td.task_definition_arn());
    assert_eq!(p.task_count(), Some(1));
    assert_eq!(p.launch_type().map(|l| l.as_str()), Some("FARGATE"));
    assert_eq!(p.platform_version(), Some("LATEST"));
    let vpc = p
        .network_configuration()
        .unwrap()
        .awsvpc_configuration()
        .unwrap();
    let (subnets, sg) = network();
    assert_eq!(vpc.subnets().join(","), *subnets);
    assert_eq!(vpc.security_groups(), std::slice::from_ref(sg));
    assert_eq!(vpc.assign_public_ip().map(|a| a.as_str()), Some("DISABLED"));

    // status shows names, never values, and the stage's newest backups.
    let bucket = moto().bucket("status");
    let key = format!(
        "{stage}/2024-03-09_07h05m03s_PGSQL/backup_{stage}_app_2024-03-09_07h05m03s.dump.zst"
    );
    moto().put(&bucket, &key, b"x".to_vec());
    let out = rec
        .backhaul()
        .args(["status", "--stage", &stage, "--bucket", &bucket])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("cron(0 3 * * ? *)") && text.contains("POSTGRES_SECRET"),
        "{text}"
    );
    assert!(text.contains(&key), "{text}");
    assert!(
        !text.contains(PG_SECRET) && !text.contains("acme"),
        "{text}"
    );
    // A bucket that cannot be listed (S3_BUCKET=acme from the task definition) is a note.
    let out = rec
        .backhaul()
        .args(["status", "--stage", &stage, "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let st: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(st["rule"]["state"], "ENABLED");
    assert_eq!(
        st["task_definition"]["env_names"],
        serde_json::json!(["BACKUP_PARALLEL", "S3_BUCKET", "STAGE"])
    );
    let note = st["backups_error"].as_str().unwrap();
    assert!(note.contains(": NoSuchBucket: "), "{st}");
    assert!(
        !note.contains("raw:") && !note.contains("ErrorMetadata"),
        "{note}"
    );
    rec.check(&[
        "ecs:DescribeClusters",
        "ecs:ListTaskDefinitions",
        "ecs:RegisterTaskDefinition",
        "events:PutRule",
        "events:PutTargets",
        "events:ListTargetsByRule",
        "events:DescribeRule",
        "ecs:DescribeTaskDefinition",
        "s3:ListObjectsV2",
    ]);
}

#[test]
fn schedule_is_idempotent_and_a_change_makes_a_new_revision() {
    let stage = stage("idem");
    let family = format!("backhaul-{stage}");
    create_cluster(&family);
    let rec = Contract::start();
    let first = summary(&mut schedule(&rec, &stage));
    // A stray target someone added by hand is removed.
    let stray = aws_sdk_eventbridge::types::Target::builder()
        .id("stray")
        .arn("arn:aws:sqs:us-east-1:123456789012:q")
        .build()
        .unwrap();
    block_on(events().put_targets().rule(&family).targets(stray).send()).unwrap();

    let again = summary(&mut schedule(&rec, &stage));
    assert_eq!(again["changed"], false);
    assert_eq!(again["revision"], first["revision"]);
    assert_eq!(again["task_definition_arn"], first["task_definition_arn"]);
    assert_eq!(targets(&family).len(), 1);
    assert_eq!(active_revisions(&family).len(), 1);

    let changed = summary(schedule(&rec, &stage).args(["--env", "EXTRA=1"]));
    assert_eq!(changed["changed"], true);
    assert_eq!(changed["revision"], 2);
    let ts = targets(&family);
    assert_eq!(ts.len(), 1);
    assert_eq!(
        Some(ts[0].ecs_parameters().unwrap().task_definition_arn()),
        changed["task_definition_arn"].as_str()
    );
    // The stray target was removed: the second run sent RemoveTargets.
    rec.check(&["events:RemoveTargets", "ecs:RegisterTaskDefinition"]);
}

#[test]
fn unschedule_removes_rule_targets_and_revisions_and_can_repeat() {
    let stage = stage("unsched");
    let family = format!("backhaul-{stage}");
    create_cluster(&family);
    let rec = Contract::start();
    summary(&mut schedule(&rec, &stage));
    summary(schedule(&rec, &stage).args(["--env", "EXTRA=1"]));
    assert_eq!(active_revisions(&family).len(), 2);

    let out = summary(
        rec.backhaul()
            .args(["unschedule", "--stage", &stage, "--deregister"]),
    );
    assert_eq!(out["removed_targets"], 1);
    assert_eq!(out["deregistered"].as_array().unwrap().len(), 2);
    let err = block_on(events().describe_rule().name(&family).send()).unwrap_err();
    assert!(err.into_service_error().is_resource_not_found_exception());
    assert!(active_revisions(&family).is_empty());

    let again = summary(
        rec.backhaul()
            .args(["unschedule", "--stage", &stage, "--deregister"]),
    );
    assert_eq!(again["removed_targets"], 0);
    rec.check(&[
        "events:RemoveTargets",
        "events:DeleteRule",
        "ecs:DeregisterTaskDefinition",
    ]);
}

#[test]
fn run_task_waits_for_the_exit_code() {
    let stage = stage("run");
    let family = format!("backhaul-{stage}");
    create_cluster(&family);
    let rec = Contract::start();
    summary(&mut schedule(&rec, &stage));
    // moto's task transition is global: tests that set it take turns.
    let _turn = crate::logs::task_states();
    py("req = urllib.request.Request(os.environ['E'] + '/moto-api/state-manager/set-transition', \
        data=json.dumps({'model_name': 'ecs::task', 'transition': {'progression': 'immediate'}}).encode(), method='POST')\n\
        urllib.request.urlopen(req).read()");
    let out = summary(
        rec.backhaul()
            .args([
                "run-task",
                "--stage",
                &stage,
                "--wait",
                "--env",
                "BACKUP_PARALLEL=1",
            ])
            .env("BACKHAUL_POLL_INTERVAL", "100ms"),
    );
    let arn = out["task_arn"].as_str().unwrap();
    assert!(
        arn.starts_with("arn:aws:ecs:us-east-1:123456789012:task/"),
        "{out}"
    );
    let id = arn.rsplit('/').next().unwrap();
    assert_eq!(out["log_stream"], format!("backhaul/backhaul/{id}"));
    assert_eq!(out["log_group"], format!("/backhaul/{stage}"));
    rec.check(&["ecs:RunTask", "ecs:DescribeTasks"]);
}

/// Runs `schedule` with one bad setting against a closed port: any AWS call would fail with
/// exit 1, so exit 2 with the message proves validation came first.
fn rejected(extra: &[&str], message: &str) {
    let mut cmd = backhaul();
    cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .args([
            "schedule",
            "--stage",
            "dev",
            "--image",
            "i",
            "--subnets",
            "subnet-1",
        ])
        .args([
            "--security-groups",
            "sg-1",
            "--execution-role-arn",
            EXEC_ROLE,
        ])
        .args([
            "--events-role-arn",
            EVENTS_ROLE,
            "--task-role-arn",
            TASK_ROLE,
        ])
        .args(extra);
    let out = cmd.assert().code(2).get_output().clone();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("error: {message}\n")
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_settings_exit_2_before_any_aws_call() {
    rejected(
        &["--schedule", "rate(5 minute)"],
        "--schedule invalid schedule \"rate(5 minute)\": use the plural unit when the value is not 1, e.g. rate(5 minutes)",
    );
    rejected(
        &["--schedule", "cron(0 3 * * *)"],
        "--schedule invalid schedule \"cron(0 3 * * *)\": cron needs 6 fields (minutes hours day-of-month month day-of-week year), e.g. cron(0 3 * * ? *)",
    );
    rejected(&["--schedule", "cron(99 3 * * ? *)"], CRON_99);
    rejected(&["--cpu", "1024", "--memory", "512"], CPU_MEMORY);
    rejected(
        &["--env", "DB_PASSWORD=x"],
        "--env DB_PASSWORD looks like a secret: store it in Secrets Manager or SSM and pass --secret DB_PASSWORD=<ARN> (or --force-plaintext-env)",
    );
    rejected(
        &["--env", "DATABASE_URL=postgres://app:hunter2@db/app"],
        "--env DATABASE_URL holds a URL with a password: store it in Secrets Manager or SSM and pass --secret DATABASE_URL=<ARN> (or --force-plaintext-env)",
    );
    rejected(
        &["--env", "NOEQUALS"],
        "--env \"NOEQUALS\" must be KEY=VALUE, e.g. --env S3_BUCKET=acme-backups",
    );
    rejected(
        &["--secret", "POSTGRES_SECRET=hunter2!"],
        &format!("--secret POSTGRES_SECRET=<value> must be a Secrets Manager secret ARN, an SSM parameter ARN or an SSM parameter name (the value is not shown), {SECRET_EXAMPLES}"),
    );
    // One field after the secret id: ECS takes none or exactly three.
    rejected(
        &["--secret", "POSTGRES_SECRET=arn:aws:secretsmanager:us-east-1:123456789012:secret:pg-AbCdEf:password"],
        &format!("--secret POSTGRES_SECRET=<value> is a Secrets Manager ARN with 1 field(s) after the secret name: ECS takes the ARN alone or followed by exactly :<json-key>:<version-stage>:<version-id> (each may be empty) (the value is not shown), {SECRET_EXAMPLES}"),
    );
    rejected(
        &["--ephemeral-storage-gib", "20"],
        "--ephemeral-storage-gib 20 is out of range: Fargate takes 21-200 GiB (omit it for the default 20 GiB)",
    );
    // Preflight: the task's own `backup` configuration code, run on the task's environment.
    rejected(
        &["--env", "S3_BUCKET=acme"],
        "task configuration would fail every scheduled run: `backup` says: PG_DB_HOST (or --pg-host) is not set: nothing to back up: configure PostgreSQL (PG_DB_HOST, DATABASE_URL or POSTGRES_SECRET) and/or MongoDB (MONGO_CONNECTION_STRING) — set it with --env, --env-file or --secret",
    );
    rejected(
        &["--secret", &format!("POSTGRES_SECRET={PG_SECRET}")],
        "task configuration would fail every scheduled run: `backup` says: S3_BUCKET (or --bucket) is not set: name the backup bucket (or pass --dest s3://bucket or file:///dir) — set it with --env, --env-file or --secret",
    );
    rejected(
        &["--env", "S3_BUCKET=acme", "--env", "PG_DB_HOST=db", "--env", "PG_DB_NAME=app"],
        "task configuration would fail every scheduled run: `backup` says: PG_DB_USER (or --pg-user) is not set: set PG_DB_USER or POSTGRES_SECRET — set it with --env, --env-file or --secret",
    );
    let out = backhaul()
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .args([
            "schedule",
            "--stage",
            "dev",
            "--image",
            "i",
            "--subnets",
            "subnet-1",
        ])
        .args([
            "--security-groups",
            "sg-1",
            "--execution-role-arn",
            EXEC_ROLE,
        ])
        .assert()
        .code(2)
        .get_output()
        .clone();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --events-role-arn (or EVENTS_ROLE_ARN) is not set: name the role EventBridge uses to run the task (or use --from-stack)\n"
    );
}

const SECRET_EXAMPLES: &str = "e.g. POSTGRES_SECRET=arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf, POSTGRES_SECRET=arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf:password:: or POSTGRES_SECRET=arn:aws:ssm:us-east-1:123456789012:parameter/prod/db-password";
const CRON_99: &str = "--schedule invalid schedule \"cron(99 3 * * ? *)\": minutes value 99 is out of range: minutes takes 0-59 and the wildcards , - * /, e.g. cron(0/15 * * * ? *)";
const CPU_MEMORY: &str =
    "--memory 512 is not valid with --cpu 1024: choose 2048-8192 in steps of 1024";

#[test]
fn dry_run_prints_the_plan_without_aws() {
    let out = backhaul()
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .args([
            "schedule",
            "--stage",
            "dev",
            "--schedule",
            "rate(1 day)",
            "--image",
            "backhaul:1.4.0",
        ])
        .args([
            "--subnets",
            "subnet-0a1,subnet-0b2",
            "--security-groups",
            "sg-0c3",
            "--assign-public-ip",
        ])
        .args([
            "--execution-role-arn",
            EXEC_ROLE,
            "--task-role-arn",
            TASK_ROLE,
        ])
        .args([
            "--events-role-arn",
            EVENTS_ROLE,
            "--cpu",
            "1024",
            "--memory",
            "2048",
        ])
        .args([
            "--env",
            "S3_BUCKET=acme-backups",
            "--env",
            "PG_DB_NAME=app,audit",
            "--env",
            "KEEP_DAILY=7",
        ])
        .args(["--secret", &format!("POSTGRES_SECRET={PG_SECRET}")])
        .args(["--command", "backup --prune", "--dry-run"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    insta::assert_snapshot!("schedule_dry_run", String::from_utf8(out).unwrap());
}

#[test]
fn from_stack_deploys_infra_and_schedules_from_its_outputs() {
    let stage = stage("stack");
    let stack = format!("backhaul-{stage}");
    let (subnets, sg) = network();
    let secret_arn = py(&format!(
        "print(client('secretsmanager').create_secret(Name='{stage}/pg', SecretString='{{}}')['ARN'])"
    ));
    let kms_key = py("print(client('kms').create_key()['KeyMetadata']['Arn'])");
    // The stack is deployed through the recorder too: the template must be one real
    // CloudFormation accepts (cfn-lint judges its content).
    let rec = Contract::start();
    let cfn = aws_sdk_cloudformation::Client::new(&rec.sdk_config());
    let template = std::fs::read_to_string(tests_dir().join("../infra/backhaul.yaml")).unwrap();
    let param = |k: &str, v: &str| {
        aws_sdk_cloudformation::types::Parameter::builder()
            .parameter_key(k)
            .parameter_value(v)
            .build()
    };
    block_on(
        cfn.create_stack()
            .stack_name(&stack)
            .template_body(template)
            .parameters(param("Stage", &stage))
            .parameters(param("ImageUri", "backhaul:stack"))
            .parameters(param("Subnets", subnets))
            .parameters(param("SecurityGroups", sg))
            .parameters(param("PostgresSecretArn", &secret_arn))
            .parameters(param("KeyPrefix", "teams/shop"))
            .parameters(param("KmsKeyArn", &kms_key))
            .parameters(param("AlarmEmail", "ops@example.com"))
            .capabilities(aws_sdk_cloudformation::types::Capability::CapabilityNamedIam)
            .send(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let outputs = loop {
        let out = block_on(cfn.describe_stacks().stack_name(&stack).send()).unwrap();
        let s = out.stacks()[0].clone();
        match s.stack_status().map(|s| s.as_str()) {
            Some("CREATE_COMPLETE") => break s.outputs().to_vec(),
            Some("CREATE_IN_PROGRESS") if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            other => panic!("stack status {other:?}: {:?}", s.stack_status_reason()),
        }
    };
    let output = |k: &str| {
        outputs
            .iter()
            .find(|o| o.output_key() == Some(k))
            .and_then(|o| o.output_value())
            .unwrap_or_else(|| panic!("output {k} missing: {outputs:?}"))
            .to_string()
    };
    for k in [
        "Stage",
        "BucketName",
        "ClusterName",
        "ImageUri",
        "RepositoryUri",
        "TaskExecutionRoleArn",
        "TaskRoleArn",
        "EventsRoleArn",
        "LogGroupName",
        "Subnets",
        "SecurityGroups",
        "AssignPublicIp",
        "ScheduleExpression",
        "PostgresSecretArn",
        "Region",
        "KeyPrefix",
        "KmsKeyArn",
        "AlarmTopicArn",
    ] {
        output(k);
    }
    // The alarm topic, encrypted with its own key (moto does not apply AWS::SNS::TopicPolicy:
    // cfn-lint judges that one).
    let topic = output("AlarmTopicArn");
    let key = py(&format!(
        "print(client('sns').get_topic_attributes(TopicArn='{topic}')['Attributes'].get('KmsMasterKeyId', ''))"
    ));
    assert!(key.starts_with("arn:aws:kms:"), "{key}");
    // Only this stage's alarm may use the key through CloudWatch (EventBridge's requests
    // carry no source keys, so its statement cannot be narrowed that way).
    let policy: serde_json::Value = serde_json::from_str(&py(&format!(
        "p = client('kms').get_key_policy(KeyId='{key}', PolicyName='default')['Policy']\n\
         print(p if isinstance(p, str) else json.dumps(p))"
    )))
    .unwrap();
    let statement = |sid: &str| {
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == sid)
            .unwrap_or_else(|| panic!("{sid} missing: {policy}"))
            .clone()
    };
    let cw = statement("NoBackupAlarmEncrypts");
    assert_eq!(
        cw["Condition"]["StringEquals"]["aws:SourceAccount"], "123456789012",
        "{cw}"
    );
    assert_eq!(
        cw["Condition"]["ArnLike"]["aws:SourceArn"],
        format!("arn:aws:cloudwatch:us-east-1:123456789012:alarm:backhaul-{stage}-no-backup"),
        "{cw}"
    );
    assert!(statement("TaskFailedRuleEncrypts")["Condition"].is_null());
    assert!(!outputs
        .iter()
        .any(|o| o.output_key() == Some("MongoSecretArn")));
    let bucket = output("BucketName");
    block_on(moto().s3().head_bucket().bucket(&bucket).send()).unwrap();
    let clusters = block_on(
        ecs()
            .describe_clusters()
            .clusters(output("ClusterName"))
            .send(),
    )
    .unwrap();
    assert_eq!(clusters.clusters().len(), 1, "{clusters:?}");

    // A value the stack's task role does not allow is refused before anything is sent.
    let err = one_error_line(
        rec.backhaul().args([
            "schedule",
            "--from-stack",
            &stack,
            "--env",
            "BACKUP_PREFIX=elsewhere",
        ]),
        2,
    );
    assert_eq!(err, "error: BACKUP_PREFIX \"elsewhere\" differs from the stack's KeyPrefix (\"teams/shop\"): the stack's task role is allowed only that; drop the --env/--env-file value or update the stack\n");
    // A secret the stack's execution role cannot read is a warning naming it.
    let s = summary(rec.backhaul().args([
        "schedule",
        "--from-stack",
        &stack,
        "--secret",
        "API_TOKEN=arn:aws:ssm:us-east-1:123456789012:parameter/shop/token",
    ]));
    let warnings = s["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{s}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("secret API_TOKEN is not one the execution role of stack"),
        "{s}"
    );
    let family = format!("backhaul-{stage}");
    let rule = block_on(events().describe_rule().name(&family).send()).unwrap();
    assert_eq!(
        rule.schedule_expression(),
        Some(output("ScheduleExpression").as_str())
    );
    let ts = targets(&family);
    assert_eq!(ts.len(), 1);
    assert_eq!(ts[0].role_arn(), Some(output("EventsRoleArn").as_str()));
    assert_eq!(ts[0].arn(), clusters.clusters()[0].cluster_arn().unwrap());
    let td = task_definition(s["task_definition_arn"].as_str().unwrap());
    let c = &td.container_definitions()[0];
    assert_eq!(c.image(), Some("backhaul:stack"));
    assert!(c
        .environment()
        .iter()
        .any(|kv| kv.name() == Some("S3_BUCKET") && kv.value() == Some(bucket.as_str())));
    let secrets: Vec<(&str, &str)> = c
        .secrets()
        .iter()
        .map(|s| (s.name(), s.value_from()))
        .collect();
    assert_eq!(
        secrets,
        [
            (
                "API_TOKEN",
                "arn:aws:ssm:us-east-1:123456789012:parameter/shop/token"
            ),
            ("POSTGRES_SECRET", secret_arn.as_str())
        ]
    );
    let env: std::collections::BTreeMap<&str, &str> = c
        .environment()
        .iter()
        .map(|kv| (kv.name().unwrap(), kv.value().unwrap()))
        .collect();
    assert_eq!(env["BACKUP_PREFIX"], "teams/shop");
    assert_eq!(env["S3_SSE"], "aws:kms");
    assert_eq!(env["S3_SSE_KMS_KEY_ID"], kms_key);
    assert_eq!(
        td.execution_role_arn(),
        Some(output("TaskExecutionRoleArn").as_str())
    );
    assert_eq!(td.task_role_arn(), Some(output("TaskRoleArn").as_str()));
    // --from-stack picked up AlarmTopicArn: the alarm and the failure rule tell that topic.
    let cw = aws_sdk_cloudwatch::Client::new(&moto().sdk_config());
    let alarms = block_on(
        cw.describe_alarms()
            .alarm_names(format!("{family}-no-backup"))
            .send(),
    )
    .unwrap();
    assert_eq!(
        alarms.metric_alarms()[0].alarm_actions(),
        std::slice::from_ref(&topic)
    );
    assert_eq!(targets(&format!("{family}.failed"))[0].arn(), topic);
    rec.check(&[
        "cloudformation:CreateStack",
        "cloudformation:DescribeStacks",
        "ecs:RegisterTaskDefinition",
        "events:PutRule",
        "events:PutTargets",
        "cloudwatch:PutMetricAlarm",
    ]);
}

/// `schedule` with every required flag but pointed nowhere: only validation can answer.
fn offline_schedule(stage: &str) -> assert_cmd::Command {
    let mut cmd = backhaul();
    cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9").args([
        "schedule",
        "--stage",
        stage,
        "--image",
        "i",
        "--subnets",
        "subnet-1",
        "--security-groups",
        "sg-1",
        "--execution-role-arn",
        EXEC_ROLE,
        "--events-role-arn",
        EVENTS_ROLE,
        "--env",
        "S3_BUCKET=acme",
        "--secret",
        &format!("POSTGRES_SECRET={PG_SECRET}"),
    ]);
    cmd
}

fn one_error_line(cmd: &mut assert_cmd::Command, code: i32) -> String {
    let out = cmd.assert().code(code).get_output().clone();
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn task_role_and_stage_length_are_checked_before_anything_is_registered() {
    let err = one_error_line(&mut offline_schedule("dev"), 2);
    assert_eq!(err, "error: --task-role-arn (or ECS_TASK_ROLE_ARN) is not set: name the role the backup runs as (without one the task has no credentials for S3) (or use --from-stack)\n");
    // 55 characters: backhaul-<stage> is exactly EventBridge's 64.
    let ok = "a".repeat(55);
    let plan = offline_schedule(&ok)
        .args(["--task-role-arn", TASK_ROLE, "--dry-run"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let plan: serde_json::Value = serde_json::from_slice(&plan).unwrap();
    assert_eq!(
        plan["requests"][1]["input"]["Name"],
        format!("backhaul-{ok}")
    );
    let long = "a".repeat(56);
    let err = one_error_line(
        offline_schedule(&long).args(["--task-role-arn", TASK_ROLE]),
        2,
    );
    assert_eq!(err, format!("error: --stage \"{long}\" is 56 characters: a stage has at most 55, so that the rule name backhaul-<stage> fits EventBridge's 64\n"));
    for cmd in ["unschedule", "run-task", "status"] {
        let err = one_error_line(
            backhaul()
                .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
                .args([cmd, "--stage", &long]),
            2,
        );
        assert!(err.contains("is 56 characters"), "{cmd}: {err}");
    }
}

/// `--dry-run` prints the very requests `schedule` then sends, and both pass the contract.
#[test]
fn dry_run_prints_exactly_the_requests_schedule_sends() {
    let stage = stage("exact");
    let family = format!("backhaul-{stage}");
    let cluster_arn = create_cluster(&family);
    let rec = Contract::start();
    let plan = rec
        .backhaul()
        .args([
            "schedule",
            "--stage",
            &stage,
            "--ephemeral-storage-gib",
            "64",
        ])
        .args(
            schedule(&rec, &stage)
                .get_args()
                .skip(3)
                .collect::<Vec<_>>(),
        )
        .arg("--dry-run")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let plan: serde_json::Value = serde_json::from_slice(&plan).unwrap();
    let requests = plan["requests"].as_array().unwrap();
    let ops: Vec<&str> = requests
        .iter()
        .map(|r| r["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        [
            "ecs:RegisterTaskDefinition",
            "events:PutRule",
            "events:PutTargets",
            "events:RemoveTargets",
            "scheduler:DeleteSchedule"
        ]
    );
    assert!(
        !plan.to_string().contains("null"),
        "no null members: {plan}"
    );
    check_records(
        &[
            json_request(
                "AmazonEC2ContainerServiceV20141113.RegisterTaskDefinition",
                &requests[0]["input"],
            ),
            json_request("AWSEvents.PutRule", &requests[1]["input"]),
            json_request("AWSEvents.PutTargets", &requests[2]["input"]),
        ],
        &[
            "ecs:RegisterTaskDefinition",
            "events:PutRule",
            "events:PutTargets",
        ],
    );
    // Nothing was sent for the dry run.
    assert!(rec.requests().is_empty(), "{:?}", rec.requests());

    summary(schedule(&rec, &stage).args(["--ephemeral-storage-gib", "64"]));
    let sent_td = rec.bodies("RegisterTaskDefinition");
    assert_eq!(sent_td, [requests[0]["input"].clone()]);
    assert_eq!(rec.bodies("PutRule"), [requests[1]["input"].clone()]);
    let mut target = requests[2]["input"].clone();
    let td_arn = task_definition(&family)
        .task_definition_arn()
        .unwrap()
        .to_string();
    target["Targets"][0]["Arn"] = cluster_arn.into();
    target["Targets"][0]["EcsParameters"]["TaskDefinitionArn"] = td_arn.into();
    assert_eq!(rec.bodies("PutTargets"), [target]);
    assert_eq!(
        task_definition(&family)
            .ephemeral_storage()
            .map(|e| e.size_in_gib()),
        Some(64)
    );
    rec.check(&[
        "ecs:RegisterTaskDefinition",
        "events:PutRule",
        "events:PutTargets",
    ]);
}

/// Without a region: one line, exit 2, before any network call — the instance metadata
/// service (pointed at a listener here) is never asked.
#[test]
fn no_region_is_one_line_and_no_metadata_probe() {
    let imds = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    imds.set_nonblocking(true).unwrap();
    let imds_url = format!("http://{}", imds.local_addr().unwrap());
    for args in [
        vec!["status", "--stage", "dev"],
        vec!["unschedule", "--stage", "dev"],
        vec!["run-task", "--stage", "dev"],
        vec!["list", "--stage", "dev", "--bucket", "acme-backups"],
    ] {
        let err = one_error_line(
            backhaul()
                .env_remove("AWS_REGION")
                .env_remove("AWS_EC2_METADATA_DISABLED")
                .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds_url)
                .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
                .args(&args),
            2,
        );
        assert_eq!(
            err,
            "error: AWS_REGION is not set: no AWS region configured: set AWS_REGION (or a region in the AWS profile)\n",
            "{args:?}"
        );
    }
    assert!(imds.accept().is_err(), "the metadata service was contacted");
}

/// AWS errors are `<operation>: <Code>: <message>` on one line, never the SDK's debug dump.
#[test]
fn aws_errors_are_one_readable_line() {
    let stage = stage("errs");
    let family = format!("backhaul-{stage}");
    create_cluster(&family);
    let rec = Contract::start();
    summary(&mut schedule(&rec, &stage));
    let (_, sg) = network();
    let outputs = [
        // A subnet that does not exist.
        one_error_line(
            rec.backhaul().args([
                "run-task",
                "--stage",
                &stage,
                "--subnets",
                "subnet-0000000000000dead",
                "--security-groups",
                sg,
            ]),
            1,
        ),
        // A bucket that does not exist.
        one_error_line(
            rec.backhaul()
                .args(["list", "--stage", &stage, "--bucket", "bh-no-such-bucket"]),
            1,
        ),
        // A cluster that does not exist.
        one_error_line(
            schedule(&rec, &stage).args(["--cluster", "no-such-cluster"]),
            1,
        ),
    ];
    for o in &outputs {
        assert!(
            !o.contains("ErrorMetadata") && !o.contains("raw:") && !o.contains("Response {"),
            "{o}"
        );
    }
    assert!(
        outputs[0].starts_with("error: ecs:RunTask: "),
        "{}",
        outputs[0]
    );
    assert!(
        outputs[1].contains("s3:ListBucket") || outputs[1].contains(": NoSuchBucket: "),
        "{}",
        outputs[1]
    );
    assert!(outputs[2].contains("no-such-cluster"), "{}", outputs[2]);
}
