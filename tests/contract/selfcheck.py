"""Self-test of the contract checker; needs no Rust.

Requests are built with botocore's own serializers from the same models the checker reads, so
the checker's decoding is held to what a real SDK puts on the wire: good inputs must pass, and
each rules-table row has a bad input that must be reported with that row's id. Then one
end-to-end run: moto_server behind record_proxy.py, boto3 calls through the proxy, check.py on
the recording (as the Rust tests use it).

Run: /opt/backhaul-venv/bin/python tests/contract/selfcheck.py
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, HERE)

import botocore.serialize  # noqa: E402

import check  # noqa: E402
import rules  # noqa: E402
import shapes  # noqa: E402
import wire  # noqa: E402

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/backhaul-task"
SECRET = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:backhaul/pg-AbCdEf"
TOPIC = f"arn:aws:sns:us-east-1:{ACCOUNT}:backhaul-alarms"
ALARM = {
    "AlarmName": "backhaul-dev-no-backup", "ActionsEnabled": True, "AlarmActions": [TOPIC], "OKActions": [TOPIC],
    "MetricName": "backup_success", "Namespace": "backhaul", "Statistic": "Sum",
    "Dimensions": [{"Name": "stage", "Value": "dev"}], "Period": 3600, "EvaluationPeriods": 26, "DatapointsToAlarm": 26,
    "Threshold": 1.0, "ComparisonOperator": "LessThanThreshold", "TreatMissingData": "breaching",
}
FAILED_PATTERN = (
    '{"source": ["aws.ecs"], "detail-type": ["ECS Task State Change"], "detail": {"lastStatus": ["STOPPED"], '
    '"group": ["family:backhaul-dev"], "$or": [{"containers": {"exitCode": [{"anything-but": 0}]}}, {"stopCode": ["TaskFailedToStart"]}]}}'
)
TOPIC_TARGET = {"Rule": "backhaul-dev.failed", "Targets": [{"Id": "backhaul-alarm-topic", "Arn": TOPIC, "InputTransformer": {
    "InputPathsMap": {"task": "$.detail.taskArn", "reason": "$.detail.stoppedReason"},
    "InputTemplate": '"backhaul stage dev: task <task> stopped: <reason>. Its log: backhaul logs --stage dev --task <task>"'}}]}


def record(service: str, op: str, params: dict, *, auth: bool = True, checksum: bool = False) -> dict:
    """One recorded request as the proxy writes it, serialized by botocore (checksum: add the
    Content-MD5 header botocore's handlers would add)."""
    m = shapes.model(service)
    ser = botocore.serialize.create_serializer(m.protocol, include_validation=False)
    r = ser.serialize_to_request(params, m.operation_model(op))
    body = r["body"]
    if isinstance(body, dict):
        body = urllib.parse.urlencode(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    elif body is None:
        body = b""
    elif not isinstance(body, bytes):
        body = body.read()
    qs = r["query_string"]
    if isinstance(qs, dict):
        qs = urllib.parse.urlencode(qs, doseq=True)
    target = r["url_path"] + (("&" if "?" in r["url_path"] else "?") + qs if qs else "")
    headers = {k.lower(): v for k, v in r["headers"].items()}
    if auth:
        scope = m.metadata.get("signingName") or m.metadata.get("endpointPrefix")
        headers["authorization"] = f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/{scope}/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
    if checksum:
        headers["content-md5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
    return {"method": r["method"], "target": target, "headers": headers, "body_b64": base64.b64encode(body).decode()}


def run(records: list[dict], strict: bool = True) -> check.Report:
    reqs = [wire.to_request(i, r) for i, r in enumerate(records, 1)]
    return check.check(reqs, strict=strict)


def taskdef(**over) -> dict:
    c = {
        "name": "backhaul",
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/backhaul:1",
        "essential": True,
        "command": ["backup"],
        "memory": 1024,
        "stopTimeout": 120,
        "environment": [{"name": "STAGE", "value": "dev"}, {"name": "S3_BUCKET", "value": "backups"}],
        "secrets": [
            {"name": "POSTGRES_SECRET", "valueFrom": SECRET},
            {"name": "PG_PASSWORD", "valueFrom": SECRET + ":password::"},
            {"name": "TOKEN", "valueFrom": f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/backhaul/token"},
            {"name": "OTHER", "valueFrom": "backhaul-other"},
        ],
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {"awslogs-group": "/backhaul/dev", "awslogs-region": "us-east-1", "awslogs-stream-prefix": "backhaul"},
        },
    }
    c.update(over.pop("container", {}))
    p = {
        "family": "backhaul-dev",
        "requiresCompatibilities": ["FARGATE"],
        "networkMode": "awsvpc",
        "cpu": "512",
        "memory": "1024",
        "executionRoleArn": ROLE,
        "taskRoleArn": ROLE,
        "containerDefinitions": [c],
        "tags": [{"key": "backhaul:stage", "value": "dev"}],
    }
    p.update(over)
    return {k: v for k, v in p.items() if v is not None}


def run_task(**over) -> dict:
    p = {
        "cluster": "backhaul",
        "taskDefinition": "backhaul-dev",
        "launchType": "FARGATE",
        "count": 1,
        "networkConfiguration": {"awsvpcConfiguration": {"subnets": ["subnet-1"], "securityGroups": ["sg-1"], "assignPublicIp": "DISABLED"}},
        "startedBy": "backhaul",
    }
    p.update(over)
    return {k: v for k, v in p.items() if v is not None}


def targets(**ecs_over) -> dict:
    ecs = {
        "TaskDefinitionArn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/backhaul-dev:1",
        "TaskCount": 1,
        "LaunchType": "FARGATE",
        "NetworkConfiguration": {"awsvpcConfiguration": {"Subnets": ["subnet-1"], "SecurityGroups": ["sg-1"], "AssignPublicIp": "DISABLED"}},
    }
    role = ecs_over.pop("RoleArn", ROLE)
    ecs.update(ecs_over)
    t = {"Id": "backhaul", "Arn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/backhaul", "EcsParameters": {k: v for k, v in ecs.items() if v is not None}}
    if role:
        t["RoleArn"] = role
    return {"Rule": "backhaul-dev", "Targets": [t]}


def schedule(**over) -> dict:
    p = {
        "Name": "backhaul-dev",
        "GroupName": "default",
        "ScheduleExpression": "cron(0 3 * * ? *)",
        "ScheduleExpressionTimezone": "Europe/Berlin",
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "Target": {
            "Arn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/backhaul",
            "RoleArn": ROLE,
            "EcsParameters": {
                "TaskDefinitionArn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/backhaul-dev:1",
                "LaunchType": "FARGATE",
                "NetworkConfiguration": {"awsvpcConfiguration": {"Subnets": ["subnet-1"], "SecurityGroups": ["sg-1"]}},
            },
        },
    }
    p.update(over)
    return {k: v for k, v in p.items() if v is not None}


# (service, operation, params) that real AWS accepts; each must be identified as that operation
# and pass with no violation.
GOOD = [
    ("ecs", "RegisterTaskDefinition", taskdef()),
    ("ecs", "RegisterTaskDefinition", taskdef(cpu="1 vCPU", memory="2 GB", ephemeralStorage={"sizeInGiB": 21})),
    ("ecs", "RegisterTaskDefinition", taskdef(cpu="16384", memory="122880", container={"memory": 4096, "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "g", "awslogs-region": "eu-west-1", "awslogs-stream-prefix": "p", "awslogs-create-group": "true"}}})),
    ("ecs", "RunTask", run_task()),
    ("ecs", "RunTask", run_task(overrides={"cpu": "1024", "memory": "3072"}, startedBy="backhaul/run-task_1")),
    ("ecs", "RunTask", run_task(overrides={"containerOverrides": [{"name": "backhaul", "command": ["backup"]}], "ephemeralStorage": {"sizeInGiB": 200}})),
    ("ecs", "DescribeTasks", {"cluster": "backhaul", "tasks": ["arn:aws:ecs:us-east-1:123456789012:task/backhaul/abc"]}),
    ("ecs", "DescribeTaskDefinition", {"taskDefinition": "backhaul-dev"}),
    ("ecs", "ListTaskDefinitions", {"familyPrefix": "backhaul-dev", "status": "ACTIVE", "sort": "DESC"}),
    ("ecs", "DeregisterTaskDefinition", {"taskDefinition": "backhaul-dev:1"}),
    ("ecs", "DescribeClusters", {"clusters": ["backhaul"]}),
    ("events", "PutRule", {"Name": "backhaul-dev", "ScheduleExpression": "cron(0 3 * * ? *)", "State": "ENABLED", "Tags": [{"Key": "backhaul:stage", "Value": "dev"}]}),
    ("events", "PutRule", {"Name": "b", "ScheduleExpression": "rate(1 day)"}),
    ("events", "PutRule", {"Name": "b", "ScheduleExpression": "rate(5 minutes)"}),
    ("events", "PutRule", {"Name": "b", "ScheduleExpression": "cron(0/15 8-17 ? * MON-FRI *)"}),
    ("events", "PutRule", {"Name": "b", "ScheduleExpression": "cron(30 2 L * ? 2030)"}),
    ("events", "PutRule", {"Name": "b", "ScheduleExpression": "cron(0 12 ? JAN,JUL 6#1 *)"}),
    ("events", "PutRule", {"Name": "x" * 64, "ScheduleExpression": "cron(0 3 15W * ? *)"}),
    ("events", "PutTargets", targets()),
    ("events", "ListTargetsByRule", {"Rule": "backhaul-dev"}),
    ("events", "RemoveTargets", {"Rule": "backhaul-dev", "Ids": ["backhaul"]}),
    ("events", "DeleteRule", {"Name": "backhaul-dev"}),
    ("events", "DescribeRule", {"Name": "backhaul-dev"}),
    ("scheduler", "CreateSchedule", schedule()),
    ("scheduler", "CreateSchedule", schedule(ScheduleExpression="at(2027-01-31T03:00:00)")),
    ("scheduler", "UpdateSchedule", schedule(ScheduleExpression="rate(12 hours)")),
    ("scheduler", "GetSchedule", {"Name": "backhaul-dev", "GroupName": "default"}),
    ("scheduler", "DeleteSchedule", {"Name": "backhaul-dev"}),
    ("scheduler", "ListSchedules", {"NamePrefix": "backhaul", "MaxResults": 10}),
    ("s3", "CreateBucket", {"Bucket": "backups", "CreateBucketConfiguration": {"LocationConstraint": "eu-west-1"}}),
    ("s3", "CreateBucket", {"Bucket": "backups"}),
    ("s3", "HeadBucket", {"Bucket": "backups"}),
    ("s3", "PutObject", {"Bucket": "backups", "Key": "dev/pg/2026/x y.dump.zst", "Body": b"data", "ChecksumSHA256": "AAAA", "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "arn:aws:kms:us-east-1:123456789012:key/abc", "Metadata": {"sha256": "ab"}}),
    ("s3", "PutObject", {"Bucket": "acme.backups-2026", "Key": "ü/" + "k" * 500, "Body": b"", "ServerSideEncryption": "AES256"}),
    ("s3", "GetObject", {"Bucket": "backups", "Key": "dev/pg/x.dump", "Range": "bytes=0-9"}),
    ("s3", "HeadObject", {"Bucket": "backups", "Key": "dev/pg/x.dump"}),
    ("s3", "ListObjectsV2", {"Bucket": "backups", "Prefix": "dev/", "ContinuationToken": "t", "MaxKeys": 1000}),
    ("s3", "CreateMultipartUpload", {"Bucket": "backups", "Key": "k", "ChecksumAlgorithm": "CRC32"}),
    ("s3", "UploadPart", {"Bucket": "backups", "Key": "k", "UploadId": "u1", "PartNumber": 2, "Body": b"x" * 100}),
    ("s3", "CompleteMultipartUpload", {"Bucket": "backups", "Key": "k", "UploadId": "u1", "MultipartUpload": {"Parts": [{"ETag": '"e1"', "PartNumber": 1}, {"ETag": '"e2"', "PartNumber": 2, "ChecksumCRC32": "AAAAAA=="}]}}),
    ("s3", "AbortMultipartUpload", {"Bucket": "backups", "Key": "k", "UploadId": "u1"}),
    ("s3", "ListParts", {"Bucket": "backups", "Key": "k", "UploadId": "u1"}),
    ("s3", "ListMultipartUploads", {"Bucket": "backups", "Prefix": "dev/"}),
    ("s3", "DeleteObjects", {"Bucket": "backups", "Delete": {"Objects": [{"Key": "a"}, {"Key": "b"}], "Quiet": True}}, "checksum"),
    ("s3", "DeleteObject", {"Bucket": "backups", "Key": "a"}),
    ("s3", "CopyObject", {"Bucket": "backups", "Key": "b", "CopySource": "backups/a"}),
    ("s3", "GetObjectTagging", {"Bucket": "backups", "Key": "a"}),
    ("s3", "ListBuckets", {}),
    ("cloudwatch", "PutMetricAlarm", ALARM),
    ("cloudwatch", "PutMetricAlarm", dict(ALARM, Period=300, EvaluationPeriods=288, DatapointsToAlarm=288)),
    ("cloudwatch", "DescribeAlarms", {"AlarmNames": ["backhaul-dev-no-backup"]}),
    ("cloudwatch", "DeleteAlarms", {"AlarmNames": ["backhaul-dev-no-backup"]}),
    ("events", "PutRule", {"Name": "backhaul-dev.failed", "EventPattern": FAILED_PATTERN, "State": "ENABLED"}),
    ("events", "PutTargets", TOPIC_TARGET),
    ("cloudformation", "DescribeStacks", {"StackName": "backhaul"}),
    ("cloudformation", "CreateStack", {"StackName": "backhaul", "TemplateBody": "Resources: {}\n", "Parameters": [{"ParameterKey": "Stage", "ParameterValue": "dev"}], "Capabilities": ["CAPABILITY_NAMED_IAM"], "Tags": [{"Key": "a", "Value": "b"}]}),
    ("iam", "CreateRole", {"RoleName": "backhaul-task", "AssumeRolePolicyDocument": '{"Version": "2012-10-17"}', "Tags": [{"Key": "a", "Value": "b"}]}),
    ("logs", "CreateLogGroup", {"logGroupName": "/backhaul/dev"}),
    ("logs", "GetLogEvents", {"logGroupName": "/backhaul/dev", "logStreamName": "backhaul/backhaul/abc", "startFromHead": True}),
    ("secretsmanager", "GetSecretValue", {"SecretId": SECRET}),
    ("ec2", "DescribeSubnets", {"SubnetIds": ["subnet-1"], "Filters": [{"Name": "vpc-id", "Values": ["vpc-1"]}]}),
    ("sts", "GetCallerIdentity", {}),
]

LONG = "x" * 65

# (rule id, service, operation, params): each must be reported with that rule id.
BAD = [
    ("ecs.awslogs-create-group", "ecs", "RegisterTaskDefinition", taskdef(container={"logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "g", "awslogs-create-group": "false"}}})),
    ("ecs.fargate-task-size", "ecs", "RegisterTaskDefinition", taskdef(cpu="512", memory="512")),
    ("ecs.fargate-task-size", "ecs", "RegisterTaskDefinition", taskdef(cpu="8192", memory="18432")),
    ("ecs.fargate-task-size", "ecs", "RegisterTaskDefinition", taskdef(cpu="300", memory="1024")),
    ("ecs.fargate-task-size", "ecs", "RegisterTaskDefinition", taskdef(memory=None)),
    ("ecs.fargate-network-mode", "ecs", "RegisterTaskDefinition", taskdef(networkMode="bridge")),
    ("ecs.fargate-network-mode", "ecs", "RegisterTaskDefinition", taskdef(networkMode=None)),
    ("ecs.container-memory", "ecs", "RegisterTaskDefinition", taskdef(container={"memory": 2048})),
    ("ecs.container-memory", "ecs", "RegisterTaskDefinition", taskdef(container={"memory": 512, "memoryReservation": 768})),
    ("ecs.stop-timeout", "ecs", "RegisterTaskDefinition", taskdef(container={"stopTimeout": 121})),
    ("ecs.ephemeral-storage", "ecs", "RegisterTaskDefinition", taskdef(ephemeralStorage={"sizeInGiB": 20})),
    ("ecs.ephemeral-storage", "ecs", "RunTask", run_task(overrides={"ephemeralStorage": {"sizeInGiB": 201}})),
    ("ecs.secret-value-from", "ecs", "RegisterTaskDefinition", taskdef(container={"secrets": [{"name": "P", "valueFrom": SECRET + ":password"}]})),
    ("ecs.secret-value-from", "ecs", "RegisterTaskDefinition", taskdef(container={"secrets": [{"name": "P", "valueFrom": SECRET + ":password:AWSCURRENT"}]})),
    ("ecs.secret-value-from", "ecs", "RegisterTaskDefinition", taskdef(container={"secrets": [{"name": "P", "valueFrom": SECRET + ":a:b:c:d"}]})),
    ("ecs.secret-value-from", "ecs", "RegisterTaskDefinition", taskdef(container={"secrets": [{"name": "P", "valueFrom": f"arn:aws:ssm:us-east-1:{ACCOUNT}:secret/x"}]})),
    ("ecs.secret-value-from", "ecs", "RegisterTaskDefinition", taskdef(container={"secrets": [{"name": "P", "valueFrom": "arn:aws:s3:::bucket/key"}]})),
    ("ecs.secret-value-from", "ecs", "RegisterTaskDefinition", taskdef(container={"secrets": [{"name": "P", "valueFrom": "arn:aws:secretsmanager:us-east-1:1:secret:x"}]})),
    ("ecs.secret-value-from", "ecs", "RegisterTaskDefinition", taskdef(container={"secrets": [{"name": "P", "valueFrom": "has space"}]})),
    ("ecs.family", "ecs", "RegisterTaskDefinition", taskdef(family="backhaul.dev")),
    ("ecs.run-task-fargate", "ecs", "RunTask", run_task(networkConfiguration=None)),
    ("ecs.run-task-fargate", "ecs", "RunTask", run_task(networkConfiguration={"awsvpcConfiguration": {"subnets": [f"subnet-{i}" for i in range(17)]}})),
    ("ecs.run-task-fargate", "ecs", "RunTask", run_task(networkConfiguration={"awsvpcConfiguration": {"subnets": ["subnet-1"], "securityGroups": [f"sg-{i}" for i in range(6)]}})),
    ("ecs.run-task-fargate", "ecs", "RunTask", run_task(count=11)),
    ("events.ecs-target", "events", "PutTargets", targets(RoleArn=None)),
    ("events.ecs-target", "events", "PutTargets", targets(NetworkConfiguration=None)),
    ("events.ecs-target", "events", "PutTargets", targets(NetworkConfiguration={"awsvpcConfiguration": {"Subnets": []}})),
    ("events.ecs-target", "events", "PutTargets", targets(TaskCount=11)),
    ("scheduler.ecs-target", "scheduler", "CreateSchedule", schedule(Target={"Arn": "arn:aws:ecs:us-east-1:123456789012:cluster/c", "RoleArn": ROLE, "EcsParameters": {"TaskDefinitionArn": "arn:aws:ecs:us-east-1:123456789012:task-definition/t:1", "LaunchType": "FARGATE"}})),
    ("events.rule-name", "events", "PutRule", {"Name": "backhaul-" + "s" * 56, "ScheduleExpression": "rate(1 day)"}),
    ("events.rule-name", "events", "PutTargets", dict(targets(), Rule="has space")),
    ("scheduler.names", "scheduler", "CreateSchedule", schedule(Name=LONG)),
    ("scheduler.names", "scheduler", "CreateSchedule", schedule(GroupName="no/slash")),
    ("events.schedule-expression", "events", "PutRule", {"Name": "b", "ScheduleExpression": "rate(5 minute)"}),
    ("events.schedule-expression", "events", "PutRule", {"Name": "b", "ScheduleExpression": "rate(1 days)"}),
    ("events.schedule-expression", "events", "PutRule", {"Name": "b", "ScheduleExpression": "rate(0 minutes)"}),
    ("events.schedule-expression", "events", "PutRule", {"Name": "b", "ScheduleExpression": "rate(2 weeks)"}),
    ("events.schedule-expression", "events", "PutRule", {"Name": "b", "ScheduleExpression": "cron(0 3 * * *)"}),
    ("events.schedule-expression", "events", "PutRule", {"Name": "b", "ScheduleExpression": "cron(0 3 * * * *)"}),
    ("events.schedule-expression", "events", "PutRule", {"Name": "b", "ScheduleExpression": "cron(0 3 ? * ? *)"}),
    ("events.schedule-expression", "events", "PutRule", {"Name": "b", "ScheduleExpression": "cron(99 99 * * ? *)"}),
    ("events.schedule-expression", "events", "PutRule", {"Name": "b", "ScheduleExpression": "cron(0 3 * 13 ? *)"}),
    ("events.schedule-expression", "events", "PutRule", {"Name": "b", "ScheduleExpression": "at(2027-01-31T03:00:00)"}),
    ("events.schedule-expression", "scheduler", "CreateSchedule", schedule(ScheduleExpression="at(2027-02-30T03:00:00)")),
    ("events.schedule-expression", "scheduler", "CreateSchedule", schedule(ScheduleExpression="daily")),
    ("tags.limits", "ecs", "RegisterTaskDefinition", taskdef(tags=[{"key": "aws:stage", "value": "dev"}])),
    ("tags.limits", "ecs", "RunTask", run_task(tags=[{"key": "k", "value": "v" * 257}])),
    ("tags.limits", "events", "PutRule", {"Name": "b", "ScheduleExpression": "rate(1 day)", "Tags": [{"Key": "k" * 129, "Value": "v"}]}),
    ("tags.limits", "ecs", "RegisterTaskDefinition", taskdef(tags=[{"key": "stage", "value": "a|b"}])),
    ("ecs.fargate-task-size", "ecs", "RunTask", run_task(overrides={"cpu": "256", "memory": "4096"})),
    ("ecs.awslogs-options", "ecs", "RegisterTaskDefinition", taskdef(container={"logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "g", "awslogs-region": "us-east-1"}}})),
    ("ecs.containers", "ecs", "RegisterTaskDefinition", taskdef(container={"essential": False})),
    ("ecs.containers", "ecs", "RegisterTaskDefinition", taskdef(container={"name": "back haul"})),
    ("ecs.containers", "ecs", "RegisterTaskDefinition", taskdef(containerDefinitions=[taskdef()["containerDefinitions"][0]] * 2)),
    ("ecs.task-definition-size", "ecs", "RegisterTaskDefinition", taskdef(container={"environment": [{"name": f"V{i}", "value": "x" * 100} for i in range(700)]})),
    ("ecs.overrides-size", "ecs", "RunTask", run_task(overrides={"containerOverrides": [{"name": "backhaul", "environment": [{"name": f"V{i}", "value": "x" * 100} for i in range(80)]}]})),
    ("ecs.started-by", "ecs", "RunTask", run_task(startedBy="backhaul run-task")),
    ("events.rule-trigger", "events", "PutRule", {"Name": "b"}),
    ("events.rule-trigger", "events", "PutRule", {"Name": "b", "ScheduleExpression": "rate(1 day)", "EventBusName": "custom"}),
    ("scheduler.timezone", "scheduler", "CreateSchedule", schedule(ScheduleExpressionTimezone="Europe/Berlinn")),
    ("scheduler.flexible-window", "scheduler", "CreateSchedule", schedule(FlexibleTimeWindow={"Mode": "OFF", "MaximumWindowInMinutes": 15})),
    ("scheduler.flexible-window", "scheduler", "UpdateSchedule", schedule(FlexibleTimeWindow={"Mode": "FLEXIBLE"})),
    ("s3.bucket-name", "s3", "CreateBucket", {"Bucket": "Acme_Backups"}),
    ("s3.bucket-name", "s3", "CreateBucket", {"Bucket": "192.168.1.1"}),
    ("s3.key", "s3", "PutObject", {"Bucket": "backups", "Key": "k" * 1025, "Body": b"x"}),
    ("s3.sizes", "s3", "UploadPart", {"Bucket": "backups", "Key": "k", "UploadId": "u", "PartNumber": 10001, "Body": b"x"}),
    ("s3.sizes", "s3", "PutObject", {"Bucket": "backups", "Key": "k", "ContentLength": (5 << 30) + 1}),
    ("s3.sizes", "s3", "CompleteMultipartUpload", {"Bucket": "backups", "Key": "k", "UploadId": "u", "MultipartUpload": {"Parts": [{"ETag": "a", "PartNumber": 2}, {"ETag": "b", "PartNumber": 1}]}}),
    ("s3.metadata", "s3", "PutObject", {"Bucket": "backups", "Key": "k", "Body": b"", "Metadata": {"note": "n" * 2100}}),
    ("s3.sse-kms", "s3", "PutObject", {"Bucket": "backups", "Key": "k", "Body": b"", "ServerSideEncryption": "AES256", "SSEKMSKeyId": "arn:aws:kms:us-east-1:123456789012:key/abc"}),
    ("cloudwatch.alarm-window", "cloudwatch", "PutMetricAlarm", dict(ALARM, Period=90)),
    ("cloudwatch.alarm-window", "cloudwatch", "PutMetricAlarm", dict(ALARM, Period=300, EvaluationPeriods=289, DatapointsToAlarm=1)),
    ("cloudwatch.alarm-window", "cloudwatch", "PutMetricAlarm", dict(ALARM, Period=3600, EvaluationPeriods=169, DatapointsToAlarm=1)),
    ("cloudwatch.alarm-window", "cloudwatch", "PutMetricAlarm", dict(ALARM, DatapointsToAlarm=27)),
    ("cloudwatch.alarm-metric", "cloudwatch", "PutMetricAlarm", dict(ALARM, TreatMissingData="Breaching")),
    ("cloudwatch.alarm-metric", "cloudwatch", "PutMetricAlarm", {k: v for k, v in ALARM.items() if k != "Statistic"}),
    ("cloudwatch.alarm-metric", "cloudwatch", "PutMetricAlarm", dict(ALARM, AlarmActions=["backhaul-alarms"])),
    ("events.event-pattern", "events", "PutRule", {"Name": "b", "EventPattern": "{nope"}),
    ("events.event-pattern", "events", "PutRule", {"Name": "b", "EventPattern": '{"source": "aws.ecs"}'}),
    ("events.event-pattern", "events", "PutRule", {"Name": "b", "EventPattern": '{"detail": {"$or": [{"a": [1]}]}}'}),
    ("events.event-pattern", "events", "PutRule", {"Name": "b", "EventPattern": '{"detail": {"exitCode": [{"not": 0}]}}'}),
    ("events.input-transformer", "events", "PutTargets", {"Rule": "r", "Targets": [dict(TOPIC_TARGET["Targets"][0], InputTransformer={"InputPathsMap": {"task": "detail.taskArn"}, "InputTemplate": '"<task>"'})]}),
    # Model checks (botocore's shapes).
    ("model.required", "ecs", "RegisterTaskDefinition", {k: v for k, v in taskdef().items() if k != "family"}),
    ("model.required", "events", "PutTargets", {"Rule": "r", "Targets": [{"Id": "1"}]}),
    ("model.enum", "ecs", "RegisterTaskDefinition", taskdef(networkMode="vpc")),
    ("model.enum", "s3", "PutObject", {"Bucket": "b", "Key": "k", "Body": b"", "StorageClass": "COLD"}),
    ("model.type", "ecs", "RegisterTaskDefinition", taskdef(cpu=512)),
    ("model.type", "ecs", "RunTask", run_task(count="1")),
    ("model.range", "events", "PutTargets", targets(TaskCount=0)),
    ("model.length", "events", "PutRule", {"Name": "b", "ScheduleExpression": "rate(1 day)", "Description": "d" * 513}),
    ("model.length", "scheduler", "CreateSchedule", schedule(Description="d" * 513)),
    ("model.pattern", "logs", "CreateLogGroup", {"logGroupName": "bad name!"}),
    ("model.pattern", "scheduler", "CreateSchedule", schedule(Target=dict(schedule()["Target"], RoleArn="role"))),
    ("model.required", "cloudformation", "CreateStack", {"TemplateBody": "x"}),
    ("model.enum", "cloudformation", "CreateStack", {"StackName": "s", "Capabilities": ["CAPABILITY_ALL"]}),
    ("model.length", "iam", "CreateRole", {"RoleName": "r" * 65, "AssumeRolePolicyDocument": "{}"}),
]


def with_status(rec: dict, status: int) -> dict:
    return dict(rec, status=status)


_COMPLETE = {"Bucket": "backups", "Key": "k", "UploadId": "u1", "MultipartUpload": {"Parts": [{"ETag": "e", "PartNumber": 1}]}}
_ABORT = {"Bucket": "backups", "Key": "k", "UploadId": "u1"}

# (rule id, records) for rules that look across requests.
BAD_SEQUENCES = [
    ("s3.upload-state", [with_status(record("s3", "CompleteMultipartUpload", _COMPLETE), 200), with_status(record("s3", "AbortMultipartUpload", _ABORT), 404)]),
    ("s3.upload-state", [with_status(record("s3", "AbortMultipartUpload", _ABORT), 204), with_status(record("s3", "UploadPart", dict(_ABORT, PartNumber=2, Body=b"x")), 404)]),
]
GOOD_SEQUENCES = [
    ("complete failed, then abort", [with_status(record("s3", "CompleteMultipartUpload", _COMPLETE), 500), with_status(record("s3", "AbortMultipartUpload", _ABORT), 204)]),
    ("no statuses recorded", [record("s3", "CompleteMultipartUpload", _COMPLETE), record("s3", "AbortMultipartUpload", _ABORT)]),
]


def json_record(service: str, op: str, body_text: str) -> dict:
    prefix = shapes.model(service).metadata["targetPrefix"]
    return {
        "method": "POST",
        "target": "/",
        "headers": {"x-amz-target": f"{prefix}.{op}", "content-type": "application/x-amz-json-1.1"},
        "body_b64": base64.b64encode(body_text.encode()).decode(),
    }


def aws_chunked(data: bytes, trailer: dict[str, str], chunk: int = 7) -> bytes:
    out = b""
    for i in range(0, len(data), chunk):
        part = data[i : i + chunk]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    out += b"0\r\n" + "".join(f"{k}:{v}\r\n" for k, v in trailer.items()).encode() + b"\r\n"
    return out


class Selfcheck:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def case(self, name: str, fn) -> None:
        try:
            fn()
            self.passed += 1
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            self.failed += 1
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            print(f"FAIL {name}: {detail}")

    def expect_clean(self, report: check.Report, want_op: str) -> None:
        got = list(report.counts)
        assert got == [want_op], f"identified as {got}, expected {want_op}; warnings {report.warnings}"
        assert not report.violations, "\n  ".join(v.line() for v in report.violations)

    def expect_rule(self, report: check.Report, rule_id: str) -> None:
        ids = [v.rule for v in report.violations]
        assert rule_id in ids, f"{rule_id} not reported; got {[v.line() for v in report.violations] or 'nothing'}"


def unit_cases(sc: Selfcheck) -> None:
    for service, op, params, *flags in GOOD:
        sc.case(
            f"good {service}:{op} {json.dumps(params, default=str)[:60]}",
            lambda s=service, o=op, p=params, c="checksum" in flags: sc.expect_clean(run([record(s, o, p, checksum=c)]), f"{s}:{o}"),
        )
    for rule_id, service, op, params in BAD:
        sc.case(f"bad {rule_id} {service}:{op}", lambda r=rule_id, s=service, o=op, p=params: sc.expect_rule(run([record(s, o, p)]), r))

    for rule_id, recs in BAD_SEQUENCES:
        sc.case(f"bad sequence {rule_id}", lambda r=rule_id, x=recs: sc.expect_rule(run(x), r))
    for name, recs in GOOD_SEQUENCES:
        sc.case(f"good sequence: {name}", lambda x=recs: _assert(not run(x).violations, [v.line() for v in run(x).violations]))
    ids = {r.id for r in rules.RULES}
    covered = {b[0] for b in BAD} | {b[0] for b in BAD_SEQUENCES}
    sc.case("every rules-table row has a bad input", lambda: _assert(ids <= covered, f"rows without a bad input: {sorted(ids - covered)}"))
    sc.case("every rules-table row names a source", lambda: _assert(all(r.source and r.text for r in rules.RULES), "a row lacks text or source"))

    # JSON null members: the SDK's serializer never writes them; a hand-built body must be caught.
    body = json.dumps(dict(taskdef(), taskRoleArn=None))
    sc.case("null member", lambda: sc.expect_rule(run([json_record("ecs", "RegisterTaskDefinition", body)]), "model.null"))
    sc.case(
        "null member path",
        lambda: _assert(any(v.path == "taskRoleArn" for v in run([json_record("ecs", "RegisterTaskDefinition", body)]).violations), "path of the null member is not taskRoleArn"),
    )
    nested = json.dumps(taskdef(containerDefinitions=[dict(taskdef()["containerDefinitions"][0], logConfiguration={"logDriver": "awslogs", "options": {"awslogs-group": "g", "awslogs-region": "us-east-1", "awslogs-stream-prefix": "p", "awslogs-create-group": "false"}})]))
    sc.case(
        "violation path is JSON-pointer-like",
        lambda: _assert(
            [v.path for v in run([json_record("ecs", "RegisterTaskDefinition", nested)]).violations] == ["containerDefinitions[0].logConfiguration.options.awslogs-create-group"],
            "wrong path",
        ),
    )
    # Unknown members: botocore's serializer refuses them, so these bodies are hand-built.
    unknown = json.dumps(taskdef(containerDefinitions=[dict(taskdef()["containerDefinitions"][0], stopTimeoutSeconds=5)]))
    sc.case("unknown member", lambda: sc.expect_rule(run([json_record("ecs", "RegisterTaskDefinition", unknown)]), "model.unknown"))
    unknown = json.dumps({"Name": "b", "ScheduleExpression": "rate(1 day)", "Schedule": "x"})
    sc.case("unknown top-level member", lambda: sc.expect_rule(run([json_record("events", "PutRule", unknown)]), "model.unknown"))
    sc.case("body that is not JSON", lambda: sc.expect_rule(run([json_record("ecs", "RegisterTaskDefinition", "{nope")]), "model.body"))
    sc.case("unknown ECS operation is a violation", lambda: sc.expect_rule(run([json_record("ecs", "RegisterTaskDefinitions", "{}")]), "model.operation"))

    # Identification without a SigV4 header: x-amz-target, or a query-protocol Action/Version.
    sc.case("json protocol without authorization", lambda: sc.expect_clean(run([record("events", "PutRule", {"Name": "b", "ScheduleExpression": "rate(1 day)"}, auth=False)]), "events:PutRule"))
    sc.case("query protocol without authorization", lambda: sc.expect_clean(run([record("cloudformation", "DescribeStacks", {"StackName": "s"}, auth=False)]), "cloudformation:DescribeStacks"))
    sc.case("query protocol list decoding", lambda: _query_lists())

    # S3 uploads with aws-chunked framing and a trailing checksum (what the Rust SDK sends).
    sc.case("s3 aws-chunked PutObject", _aws_chunked_put)
    sc.case("s3 x-id names the operation", _x_id)
    delete = record("s3", "DeleteObjects", {"Bucket": "backups", "Delete": {"Objects": [{"Key": "a"}]}})
    sc.case("s3 DeleteObjects without a checksum header", lambda: sc.expect_rule(run([delete]), "model.checksum"))
    sc.case("s3 virtual-hosted style", _virtual_host)
    sc.case("s3 unknown query parameter", lambda: sc.expect_rule(run([dict(record("s3", "GetObject", {"Bucket": "b", "Key": "k"}), target="/b/k?versionid=1")]), "model.unknown"))
    sc.case("s3 unidentified is a warning unless --strict", _s3_unidentified)
    sc.case("unknown service is a warning", _unknown_service)
    sc.case("rpc-v2-cbor: operation from the path, input not decoded", _cbor)
    sc.case("moto-api control requests are skipped", lambda: _assert(run([{"method": "POST", "target": "/moto-api/state-manager/set-transition", "headers": {}, "body_b64": ""}]).checked == 0, "counted"))


def _assert(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def _query_lists() -> None:
    params = {"StackName": "s", "TemplateBody": "x", "Parameters": [{"ParameterKey": "A", "ParameterValue": "1"}, {"ParameterKey": "B", "ParameterValue": "2"}], "Tags": []}
    req = wire.to_request(1, record("cloudformation", "CreateStack", params))
    ident = wire.identify(req)
    _assert(ident.params == params, f"decoded {ident.params}")


def _aws_chunked_put() -> None:
    data = b"hello world, in chunks"
    rec = record("s3", "PutObject", {"Bucket": "backups", "Key": "dev/a", "Body": b""})
    rec["target"] = "/backups/dev/a?x-id=PutObject"
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    rec["headers"].update(
        {
            "content-encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(data)),
            "x-amz-trailer": "x-amz-checksum-crc32",
            "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "x-amz-sdk-checksum-algorithm": "CRC32",
        }
    )
    rec["body_b64"] = base64.b64encode(aws_chunked(data, {"x-amz-checksum-crc32": crc})).decode()
    req = wire.to_request(1, rec)
    _assert(req.body == data, f"decoded body {req.body!r}")
    ident = wire.identify(req)
    _assert(ident.op == "s3:PutObject", ident.op)
    _assert(ident.params.get("ChecksumCRC32") == crc, f"trailer not read: {ident.params}")
    _assert(len(ident.params["Body"]) == len(data), "body length")
    _assert(not run([rec]).violations, "violations on a good chunked upload")
    # Framing that is not aws-chunked after all: a warning, not a crash.
    rec["body_b64"] = base64.b64encode(b"zz\r\nnot chunked").decode()
    rep = run([rec])
    _assert(any("aws-chunked" in w for w in rep.warnings), f"no warning: {rep.warnings}")


def _x_id() -> None:
    rec = record("s3", "UploadPart", {"Bucket": "b", "Key": "k", "UploadId": "u", "PartNumber": 1, "Body": b"x"})
    rec["target"] += "&x-id=UploadPart"
    _assert(wire.identify(wire.to_request(1, rec)).op == "s3:UploadPart", "x-id UploadPart")
    rec = record("s3", "GetObject", {"Bucket": "b", "Key": "a/b/c"})
    rec["target"] += "?x-id=GetObject"
    rep = run([rec])
    _assert(list(rep.counts) == ["s3:GetObject"] and not rep.violations, f"{rep.counts} {[v.line() for v in rep.violations]}")


def _virtual_host() -> None:
    for host, path, op in [
        ("backups.s3.us-east-1.amazonaws.com", "/dev/a%20b", "s3:GetObject"),
        ("backups.localhost:5000", "/", "s3:ListObjectsV2"),
        ("127.0.0.1:5000", "/", "s3:ListBuckets"),
        ("s3.us-east-1.amazonaws.com", "/backups/k", "s3:GetObject"),
    ]:
        rec = record("s3", "GetObject", {"Bucket": "b", "Key": "k"})
        rec["target"] = path + ("?list-type=2" if op == "s3:ListObjectsV2" else "")
        rec["headers"]["host"] = host
        ident = wire.identify(wire.to_request(1, rec))
        _assert(ident.op == op, f"{host}{path}: {ident.op} {ident.why}")
        if op == "s3:GetObject":
            _assert(ident.params["Bucket"] == "backups", f"{host}: bucket {ident.params}")


def _s3_unidentified() -> None:
    rec = record("s3", "GetObject", {"Bucket": "b", "Key": "k"})
    rec["method"] = "PATCH"
    rep = run([rec], strict=False)
    _assert(not rep.violations and rep.warnings, f"lenient: {rep.warnings} {rep.violations}")
    rep = run([rec], strict=True)
    _assert([v.rule for v in rep.violations] == ["model.operation"], "strict")


def _cbor() -> None:
    rec = {
        "method": "POST",
        "target": "/service/AmazonEC2ContainerServiceV20141113/operation/ListClusters",
        "headers": {"smithy-protocol": "rpc-v2-cbor", "authorization": "AWS4-HMAC-SHA256 Credential=A/20260101/us-east-1/ecs/aws4_request, SignedHeaders=host, Signature=0"},
        "body_b64": base64.b64encode(b"\xa0").decode(),
    }
    rep = run([rec])
    _assert(list(rep.counts) == ["ecs:ListClusters"] and not rep.violations and not rep.warnings, f"{rep.counts} {rep.warnings}")
    # Decoded, then checked like any other input.
    rec["target"] = "/service/GraniteServiceVersion20100801/operation/PutMetricAlarm"
    rec["headers"] = dict(rec["headers"], authorization=rec["headers"]["authorization"].replace("/ecs/", "/monitoring/"))
    rec["body_b64"] = base64.b64encode(bytes.fromhex("a1") + b"\x66Period" + bytes.fromhex("18 5a")).decode()
    rep = run([rec])
    _assert(list(rep.counts) == ["cloudwatch:PutMetricAlarm"] and "cloudwatch.alarm-window" in [v.rule for v in rep.violations], f"{rep.counts} {[v.line() for v in rep.violations]}")
    rec["body_b64"] = base64.b64encode(b"\xff\x00").decode()
    _assert("model.body" in [v.rule for v in run([rec]).violations], "a body that is not CBOR")


def _unknown_service() -> None:
    rec = {"method": "POST", "target": "/", "headers": {"x-amz-target": "NoSuchService_2020.DoThing"}, "body_b64": ""}
    rep = run([rec])
    _assert(not rep.violations and rep.warnings, f"{rep.warnings} {rep.violations}")


# ---------------------------------------------------------------------------------------------
# CLI and end to end
# ---------------------------------------------------------------------------------------------

PY = sys.executable
CHECK = os.path.join(HERE, "check.py")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, CHECK, *args], capture_output=True, text=True, timeout=60)


def write_jsonl(path: str, records: list[dict]) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def cli_cases(sc: Selfcheck, tmp: str) -> None:
    good = os.path.join(tmp, "good.jsonl")
    write_jsonl(good, [record("ecs", "RegisterTaskDefinition", taskdef()), record("events", "PutRule", {"Name": "b", "ScheduleExpression": "rate(1 day)"})])
    bad = os.path.join(tmp, "bad.jsonl")
    write_jsonl(bad, [record(*b[1:]) for b in BAD[:1]])

    def good_run():
        p = cli(good, "--expect", "ecs:RegisterTaskDefinition,events:PutRule")
        _assert(p.returncode == 0, f"exit {p.returncode}: {p.stdout}{p.stderr}")
        _assert(p.stdout.strip().splitlines()[-1].startswith("checked 2 requests (ecs:RegisterTaskDefinition=1, events:PutRule=1), 0 violations"), p.stdout)

    def missing():
        p = cli(good, "--expect", "ecs:RunTask")
        _assert(p.returncode == 1 and "ecs:RunTask: expected in the recording but not seen" in p.stdout, f"exit {p.returncode}: {p.stdout}")

    def violation():
        p = cli(bad)
        _assert(p.returncode == 1, f"exit {p.returncode}")
        _assert(p.stdout.startswith("ecs:RegisterTaskDefinition containerDefinitions[0].logConfiguration.options.awslogs-create-group: awslogs option"), p.stdout)
        _assert("[ecs.awslogs-create-group; https://github.com/terraform-linters/tflint-ruleset-aws/issues/348" in p.stdout, p.stdout)

    def unreadable():
        p = cli(os.path.join(tmp, "missing.jsonl"))
        _assert(p.returncode == 2 and p.stderr.count("\n") == 1, f"exit {p.returncode}: {p.stderr}")
        garbage = os.path.join(tmp, "garbage.jsonl")
        with open(garbage, "w") as f:
            f.write('{"method": "POST"}\n')
        p = cli(garbage)
        _assert(p.returncode == 2 and ":1:" in p.stderr, f"exit {p.returncode}: {p.stderr}")

    def plan():
        path = os.path.join(tmp, "plan.json")
        good_plan = {
            "reads": ["ecs:DescribeClusters"],
            "requests": [
                {"operation": "ecs:RegisterTaskDefinition", "input": taskdef(), "when": "unless unchanged"},
                {"operation": "events:PutRule", "input": {"Name": "backhaul-dev", "ScheduleExpression": "rate(1 day)"}},
                {"operation": "events:PutTargets", "input": targets(TaskDefinitionArn="<backhaul-dev:new revision>")},
                {"operation": "events:RemoveTargets", "input": {"Rule": "backhaul-dev", "Ids": ["<other target ids>"]}},
            ],
        }
        with open(path, "w") as f:
            json.dump(good_plan, f)
        p = cli("--plan", path, "--expect", "ecs:RegisterTaskDefinition")
        _assert(p.returncode == 0 and "checked 4 planned requests" in p.stdout, f"exit {p.returncode}: {p.stdout}{p.stderr}")
        good_plan["requests"][0]["input"] = dict(taskdef(), taskRoleArn=None)
        good_plan["requests"][1]["input"]["ScheduleExpression"] = "rate(1 days)"
        with open(path, "w") as f:
            json.dump(good_plan, f)
        p = cli("--plan", path)
        _assert(p.returncode == 1 and "ecs:RegisterTaskDefinition taskRoleArn: null" in p.stdout and "events.schedule-expression" in p.stdout, p.stdout)
        with open(path, "w") as f:
            f.write('{"requests": [{"input": {}}]}')
        p = cli("--plan", path)
        _assert(p.returncode == 2, f"exit {p.returncode}: {p.stderr}")

    def omitted():
        rec = record("s3", "UploadPart", {"Bucket": "b", "Key": "k", "UploadId": "u", "PartNumber": 1, "Body": b""})
        rec.update(body_b64="", body_omitted=5 << 20)
        rep = run([rec])
        _assert(list(rep.counts) == ["s3:UploadPart"] and not rep.violations, f"{rep.counts} {[v.line() for v in rep.violations]}")
        rec = record("s3", "CompleteMultipartUpload", {"Bucket": "b", "Key": "k", "UploadId": "u", "MultipartUpload": {"Parts": []}})
        rec.update(body_b64="", body_omitted=100)
        _assert([v.rule for v in run([rec]).violations] == ["model.body"], "an omitted XML body is reported")

    def markdown():
        p = cli("--rules-markdown")
        _assert(p.returncode == 0 and all(f"`{r.id}`" in p.stdout for r in rules.RULES), p.stdout)

    sc.case("cli: good recording exits 0", good_run)
    sc.case("cli: --expect of an unseen operation exits 1", missing)
    sc.case("cli: violation line and exit 1", violation)
    sc.case("cli: unreadable recording exits 2", unreadable)
    sc.case("cli: --rules-markdown", markdown)
    sc.case("cli: --plan checks a schedule --dry-run plan", plan)
    sc.case("omitted object bytes (record_proxy.py --max-body)", omitted)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def end_to_end(sc: Selfcheck, tmp: str) -> None:
    import boto3
    from botocore.config import Config

    moto_server = os.path.join(os.path.dirname(PY), "moto_server")
    port = free_port()
    moto = subprocess.Popen([moto_server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rec = os.path.join(tmp, "e2e.jsonl")
    proxy = subprocess.Popen([PY, os.path.join(HERE, "record_proxy.py"), "--upstream", f"http://127.0.0.1:{port}", "--out", rec, "--max-body", "500"], stdout=subprocess.PIPE, text=True)
    try:
        line = proxy.stdout.readline().strip()
        _assert(line.startswith("listening on http://127.0.0.1:"), f"proxy said {line!r}")
        url = line.split()[-1]
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing", config=Config(retries={"max_attempts": 1}))
        ecs, events, s3 = boto3.client("ecs", **kw), boto3.client("events", **kw), boto3.client("s3", **kw)

        def calls():
            arn = ecs.register_task_definition(**taskdef())["taskDefinition"]["taskDefinitionArn"]
            events.put_rule(Name="backhaul-dev", ScheduleExpression="cron(0 3 * * ? *)")
            t = targets(TaskDefinitionArn=arn)
            events.put_targets(**t)
            _assert(events.list_targets_by_rule(Rule="backhaul-dev")["Targets"][0]["Id"] == "backhaul", "target round trip")
            s3.create_bucket(Bucket="backups")
            s3.put_object(Bucket="backups", Key="dev/a b.txt", Body=b"hello")
            up = s3.create_multipart_upload(Bucket="backups", Key="dev/big")["UploadId"]
            etag = s3.upload_part(Bucket="backups", Key="dev/big", UploadId=up, PartNumber=1, Body=b"x" * 1000)["ETag"]
            s3.complete_multipart_upload(Bucket="backups", Key="dev/big", UploadId=up, MultipartUpload={"Parts": [{"ETag": etag, "PartNumber": 1}]})
            _assert(s3.get_object(Bucket="backups", Key="dev/big")["Body"].read() == b"x" * 1000, "object through the proxy")
            s3.list_objects_v2(Bucket="backups", Prefix="dev/")
            s3.delete_objects(Bucket="backups", Delete={"Objects": [{"Key": "dev/a b.txt"}]})
            p = cli(rec, "--strict", "--expect", "ecs:RegisterTaskDefinition,events:PutRule,events:PutTargets,s3:CreateBucket,s3:PutObject,s3:CreateMultipartUpload,s3:UploadPart,s3:CompleteMultipartUpload,s3:GetObject,s3:ListObjectsV2,s3:DeleteObjects")
            _assert(p.returncode == 0, f"exit {p.returncode}:\n{p.stdout}{p.stderr}")
            _assert("checked 12 requests" in p.stdout, p.stdout)
            recorded = [json.loads(line) for line in open(rec)]
            _assert([r["body_omitted"] for r in recorded if "body_omitted" in r] == [1000], "the 1000-byte part is left out of the recording, nothing else")
            _assert(all(200 <= r["status"] < 300 for r in recorded), f"statuses {[r['status'] for r in recorded]}")

        sc.case("end to end: boto3 through record_proxy to moto, recording passes", calls)

        def moto_accepts_what_aws_rejects():
            before = sum(1 for _ in open(rec))
            bad = taskdef(container={"logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "g", "awslogs-create-group": "false"}}})
            ecs.register_task_definition(**bad)  # moto says yes
            lines = open(rec).read().splitlines()[before:]
            only = os.path.join(tmp, "e2e-bad.jsonl")
            with open(only, "w") as f:
                f.write("\n".join(lines) + "\n")
            p = cli(only)
            _assert(p.returncode == 1 and "ecs.awslogs-create-group" in p.stdout, f"exit {p.returncode}: {p.stdout}")

        sc.case("end to end: what moto accepts and ECS rejects is reported", moto_accepts_what_aws_rejects)
    finally:
        proxy.terminate()
        moto.terminate()
        proxy.wait(10)
        moto.wait(10)


def main() -> int:
    sc = Selfcheck()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="contract-selfcheck-") as tmp:
        unit_cases(sc)
        cli_cases(sc, tmp)
        if "--no-e2e" not in sys.argv:
            try:
                end_to_end(sc, tmp)
            except Exception as e:  # noqa: BLE001
                sc.failed += 1
                print(f"FAIL end to end setup: {e}")
    print(f"contract selfcheck: {sc.passed} passed, {sc.failed} failed ({time.monotonic() - started:.1f}s)")
    return 1 if sc.failed else 0


if __name__ == "__main__":
    sys.exit(main())
