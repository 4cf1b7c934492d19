"""The rules table: what real AWS services enforce and moto does not, one row per rule with
its id, text and public source. Part of the contract checker (check.py); add a row with @rule
and a bad input in selfcheck.py.
"""

from __future__ import annotations

import datetime
import json
import re
import zoneinfo
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from shapes import MapKey, short

# ---------------------------------------------------------------------------------------------
# Rules table: what real services enforce and moto does not
# ---------------------------------------------------------------------------------------------


@dataclass
class Rule:
    id: str
    ops: tuple[str, ...]  # "ecs:RegisterTaskDefinition"
    text: str
    source: str
    check: Callable[..., Iterator[tuple[list, str]]]  # (params, op[, Sequence]) → (path, what was found)
    sequence: bool = False


@dataclass
class Sequence:
    """What a sequence rule sees beyond one request: its own state across the recording, the
    request's line number and the response status (None when the recorder did not write it)."""

    state: dict
    n: int
    status: int | None

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


RULES: list[Rule] = []


def rule(id: str, ops: str, text: str, source: str, sequence: bool = False):
    """Adds a row: the decorated function gets the request's params (model member names) and
    its "service:Operation" (and with sequence=True a Sequence), and yields (path parts, what
    was found) for each breach."""

    def deco(fn):
        RULES.append(Rule(id, tuple(o.strip() for o in ops.split(",")), text, source, fn, sequence))
        return fn

    return deco


def items(value: Any) -> list:
    return value if isinstance(value, list) else []


def obj(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


# Fargate task sizes: task cpu units → allowed memory (MiB).
FARGATE_SIZES = {
    256: [512, 1024, 2048],
    512: list(range(1024, 4096 + 1, 1024)),
    1024: list(range(2048, 8192 + 1, 1024)),
    2048: list(range(4096, 16384 + 1, 1024)),
    4096: list(range(8192, 30720 + 1, 1024)),
    8192: list(range(16384, 61440 + 1, 4096)),
    16384: list(range(32768, 122880 + 1, 8192)),
}


def cpu_units(v: Any) -> int | None:
    """Task cpu as ECS accepts it: "1024" or "1 vCPU"."""
    if not isinstance(v, str):
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(vcpu)?\s*", v, re.I)
    if not m:
        return None
    n = float(m.group(1)) * (1024 if m.group(2) else 1)
    return int(n) if n == int(n) else None


def memory_mib(v: Any) -> int | None:
    """Task memory as ECS accepts it: "2048" (MiB) or "2 GB"."""
    if not isinstance(v, str):
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(gb)?\s*", v, re.I)
    if not m:
        return None
    n = float(m.group(1)) * (1024 if m.group(2) else 1)
    return int(n) if n == int(n) else None


def is_fargate_taskdef(p: dict) -> bool:
    return "FARGATE" in items(p.get("requiresCompatibilities"))


@rule(
    "ecs.awslogs-create-group",
    "ecs:RegisterTaskDefinition",
    "awslogs option 'awslogs-create-group' may only be \"true\"; omit it otherwise "
    "(ECS: ClientException: Log driver awslogs option 'awslogs-create-group' should only be set to 'true', else omit option)",
    "https://github.com/terraform-linters/tflint-ruleset-aws/issues/348; "
    "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/using_awslogs.html",
)
def _awslogs_create_group(p, op):
    for i, c in enumerate(items(p.get("containerDefinitions"))):
        log = obj(obj(c).get("logConfiguration"))
        opts = obj(log.get("options"))
        if log.get("logDriver") == "awslogs" and "awslogs-create-group" in opts and opts["awslogs-create-group"] != "true":
            yield ["containerDefinitions", i, "logConfiguration", "options", MapKey("awslogs-create-group")], f"got {short(opts['awslogs-create-group'])}"


@rule(
    "ecs.fargate-task-size",
    "ecs:RegisterTaskDefinition,ecs:RunTask",
    "a FARGATE task definition needs task-level cpu and memory, a supported pair "
    "(256: 512/1024/2048; 512: 1024-4096 step 1024; 1024: 2048-8192 step 1024; 2048: 4096-16384 step 1024; "
    "4096: 8192-30720 step 1024; 8192: 16384-61440 step 4096; 16384: 32768-122880 step 8192)",
    "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task_definition_parameters.html#task_size (Task size)",
)
def _fargate_task_size(p, op):
    if op == "ecs:RunTask":
        o = obj(p.get("overrides"))
        if o.get("cpu") is not None and o.get("memory") is not None and _uses_fargate(p.get("launchType"), p.get("capacityProviderStrategy"), "capacityProvider"):
            cpu, mem = cpu_units(o["cpu"]), memory_mib(o["memory"])
            if cpu not in FARGATE_SIZES or mem not in FARGATE_SIZES[cpu]:
                yield ["overrides"], f"cpu {short(o['cpu'])} with memory {short(o['memory'])} is not a Fargate size"
        return
    if not is_fargate_taskdef(p):
        return
    for k in ("cpu", "memory"):
        if p.get(k) is None:
            yield [k], "missing"
    if p.get("cpu") is None or p.get("memory") is None:
        return
    cpu, mem = cpu_units(p["cpu"]), memory_mib(p["memory"])
    if cpu not in FARGATE_SIZES:
        yield ["cpu"], f"cpu {short(p['cpu'])} is not a Fargate size"
    elif mem not in FARGATE_SIZES[cpu]:
        yield ["memory"], f"memory {short(p['memory'])} is not allowed with cpu {cpu}"


@rule(
    "ecs.fargate-network-mode",
    "ecs:RegisterTaskDefinition",
    "a FARGATE task definition needs networkMode \"awsvpc\"",
    "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task_definition_parameters.html#network_mode",
)
def _fargate_network_mode(p, op):
    if is_fargate_taskdef(p) and p.get("networkMode") != "awsvpc":
        yield ["networkMode"], f"got {short(p.get('networkMode'))}"


@rule(
    "ecs.container-memory",
    "ecs:RegisterTaskDefinition",
    "container memory must not exceed the task memory, and memoryReservation must be below memory",
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ContainerDefinition.html (memory, memoryReservation)",
)
def _container_memory(p, op):
    task_mem = memory_mib(p.get("memory"))
    for i, c in enumerate(items(p.get("containerDefinitions"))):
        c = obj(c)
        mem, res = c.get("memory"), c.get("memoryReservation")
        if task_mem is not None and isinstance(mem, int) and mem > task_mem:
            yield ["containerDefinitions", i, "memory"], f"{mem} MiB > task memory {task_mem} MiB"
        if task_mem is not None and isinstance(res, int) and res > task_mem:
            yield ["containerDefinitions", i, "memoryReservation"], f"{res} MiB > task memory {task_mem} MiB"
        if isinstance(mem, int) and isinstance(res, int) and res > mem:
            yield ["containerDefinitions", i, "memoryReservation"], f"{res} > memory {mem}"


@rule(
    "ecs.stop-timeout",
    "ecs:RegisterTaskDefinition",
    "container stopTimeout is at most 120 seconds on Fargate",
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ContainerDefinition.html (stopTimeout)",
)
def _stop_timeout(p, op):
    for i, c in enumerate(items(p.get("containerDefinitions"))):
        v = obj(c).get("stopTimeout")
        if isinstance(v, int) and not isinstance(v, bool) and is_fargate_taskdef(p) and v > 120:
            yield ["containerDefinitions", i, "stopTimeout"], f"got {v}"


@rule(
    "ecs.ephemeral-storage",
    "ecs:RegisterTaskDefinition,ecs:RunTask",
    "ephemeralStorage.sizeInGiB must be 21-200",
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_EphemeralStorage.html",
)
def _ephemeral_storage(p, op):
    for base in ([], ["overrides"]):
        holder = p
        for k in base:
            holder = obj(holder.get(k))
        v = obj(holder.get("ephemeralStorage")).get("sizeInGiB")
        if isinstance(v, int) and not 21 <= v <= 200:
            yield base + ["ephemeralStorage", "sizeInGiB"], f"got {v}"


_REGION = r"[a-z]{2}(-[a-z]+)+-\d+"
_PARTITION = r"aws(-[a-z]+)*"


def value_from_problem(v: str) -> str | None:
    """Why ECS would not resolve this `valueFrom`, or None when it would."""
    if not v.startswith("arn:"):
        if re.fullmatch(r"[A-Za-z0-9_.\-/]+", v):
            return None  # an SSM parameter name in the task's region
        return "neither an ARN nor an SSM parameter name"
    parts = v.split(":")
    if len(parts) < 6:
        return "not a complete ARN"
    _, partition, svc, region, account = parts[:5]
    if not re.fullmatch(_PARTITION, partition) or not re.fullmatch(_REGION, region) or not re.fullmatch(r"\d{12}", account):
        return "partition, region or account id malformed"
    if svc == "secretsmanager":
        if parts[5] != "secret" or len(parts) < 7 or not parts[6]:
            return "a Secrets Manager ARN names a secret: arn:aws:secretsmanager:<region>:<account>:secret:<id>"
        if len(parts) not in (7, 10):
            return (
                f"{len(parts) - 7} segment(s) after the secret id; ECS accepts none or exactly "
                "three (:<json-key>:<version-stage>:<version-id>, each may be empty)"
            )
        if not re.fullmatch(r"[A-Za-z0-9/_+=.@\-]+", parts[6]):
            return "secret id has characters Secrets Manager does not allow"
        return None
    if svc == "ssm":
        rest = ":".join(parts[5:])
        if not re.fullmatch(r"parameter/[A-Za-z0-9_.\-/]+", rest):
            return "an SSM ARN names a parameter: arn:aws:ssm:<region>:<account>:parameter/<name>"
        return None
    return f"{svc} is neither secretsmanager nor ssm"


@rule(
    "ecs.secret-value-from",
    "ecs:RegisterTaskDefinition",
    "secrets valueFrom must be arn:aws:secretsmanager:<region>:<account>:secret:<id> optionally followed by exactly "
    ":<json-key>:<version-stage>:<version-id>, or arn:aws:ssm:<region>:<account>:parameter/<name>, or an SSM parameter name",
    "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/secrets-envvar-secrets-manager.html; "
    "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/secrets-envvar-ssm-paramstore.html",
)
def _secret_value_from(p, op):
    for i, c in enumerate(items(p.get("containerDefinitions"))):
        c = obj(c)
        lists = [(["secrets"], c.get("secrets")), (["logConfiguration", "secretOptions"], obj(c.get("logConfiguration")).get("secretOptions"))]
        for where, lst in lists:
            for j, s in enumerate(items(lst)):
                v = obj(s).get("valueFrom")
                if isinstance(v, str):
                    why = value_from_problem(v)
                    if why:
                        yield ["containerDefinitions", i] + where + [j, "valueFrom"], f"{short(v)}: {why}"


@rule(
    "ecs.family",
    "ecs:RegisterTaskDefinition",
    "task definition family: up to 255 letters, numbers, hyphens and underscores",
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html (family)",
)
def _family(p, op):
    v = p.get("family")
    if isinstance(v, str) and not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", v):
        yield ["family"], f"got {short(v)}"


def _awsvpc_problems(nc: Any, base: list, vpc_key: str, subnets: str, groups: str):
    vpc = obj(obj(nc).get(vpc_key))
    if not vpc:
        yield base + [vpc_key], "missing"
        return
    sn = vpc.get(subnets)
    if not isinstance(sn, list) or not 1 <= len(sn) <= 16:
        yield base + [vpc_key, subnets], f"{len(sn) if isinstance(sn, list) else 'no'} subnets, 1-16 required"
    sg = vpc.get(groups)
    if isinstance(sg, list) and len(sg) > 5:
        yield base + [vpc_key, groups], f"{len(sg)} security groups, at most 5"


def _uses_fargate(launch_type: Any, strategy: Any, provider_key: str) -> bool:
    if launch_type == "FARGATE":
        return True
    return any(obj(s).get(provider_key) in ("FARGATE", "FARGATE_SPOT") for s in items(strategy))


@rule(
    "ecs.run-task-fargate",
    "ecs:RunTask",
    "RunTask on FARGATE needs networkConfiguration.awsvpcConfiguration with 1-16 subnets and at most 5 security groups; count is 1-10",
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RunTask.html; "
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_AwsVpcConfiguration.html",
)
def _run_task_fargate(p, op):
    count = p.get("count")
    if isinstance(count, int) and not 1 <= count <= 10:
        yield ["count"], f"got {count}"
    if _uses_fargate(p.get("launchType"), p.get("capacityProviderStrategy"), "capacityProvider"):
        yield from _awsvpc_problems(p.get("networkConfiguration"), ["networkConfiguration"], "awsvpcConfiguration", "subnets", "securityGroups")


@rule(
    "events.ecs-target",
    "events:PutTargets",
    "an ECS target needs RoleArn; with launch type FARGATE it needs NetworkConfiguration.awsvpcConfiguration "
    "with 1-16 Subnets and at most 5 SecurityGroups; TaskCount is 1-10",
    "https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_EcsParameters.html; "
    "https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_AwsVpcConfiguration.html; "
    "https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-use-resource-based.html (ECS targets use a role)",
)
def _events_ecs_target(p, op):
    for i, t in enumerate(items(p.get("Targets"))):
        t = obj(t)
        ecs = t.get("EcsParameters")
        if not isinstance(ecs, dict):
            continue
        base = ["Targets", i]
        if not t.get("RoleArn"):
            yield base + ["RoleArn"], "missing"
        tc = ecs.get("TaskCount")
        if isinstance(tc, int) and not 1 <= tc <= 10:
            yield base + ["EcsParameters", "TaskCount"], f"got {tc}"
        if _uses_fargate(ecs.get("LaunchType"), ecs.get("CapacityProviderStrategy"), "capacityProvider"):
            yield from _awsvpc_problems(ecs.get("NetworkConfiguration"), base + ["EcsParameters", "NetworkConfiguration"], "awsvpcConfiguration", "Subnets", "SecurityGroups")


@rule(
    "scheduler.ecs-target",
    "scheduler:CreateSchedule,scheduler:UpdateSchedule",
    "an ECS target with launch type FARGATE needs NetworkConfiguration.awsvpcConfiguration with 1-16 Subnets and at most 5 SecurityGroups",
    "https://docs.aws.amazon.com/scheduler/latest/APIReference/API_EcsParameters.html; "
    "https://docs.aws.amazon.com/scheduler/latest/APIReference/API_AwsVpcConfiguration.html",
)
def _scheduler_ecs_target(p, op):
    ecs = obj(obj(p.get("Target")).get("EcsParameters"))
    if ecs and _uses_fargate(ecs.get("LaunchType"), ecs.get("CapacityProviderStrategy"), "capacityProvider"):
        yield from _awsvpc_problems(ecs.get("NetworkConfiguration"), ["Target", "EcsParameters", "NetworkConfiguration"], "awsvpcConfiguration", "Subnets", "SecurityGroups")


@rule(
    "events.rule-name",
    "events:PutRule,events:PutTargets,events:RemoveTargets,events:DeleteRule,events:DescribeRule,"
    "events:ListTargetsByRule,events:EnableRule,events:DisableRule",
    "EventBridge rule names are 1-64 characters of letters, digits, '.', '-' and '_'",
    "https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_PutRule.html (Name)",
)
def _rule_name(p, op):
    for k in ("Name", "Rule"):
        v = p.get(k)
        if isinstance(v, str) and not re.fullmatch(r"[.\-_A-Za-z0-9]{1,64}", v):
            yield [k], f"{short(v)} ({len(v)} characters)"


@rule(
    "scheduler.names",
    "scheduler:CreateSchedule,scheduler:UpdateSchedule,scheduler:DeleteSchedule,scheduler:GetSchedule,"
    "scheduler:CreateScheduleGroup,scheduler:DeleteScheduleGroup,scheduler:GetScheduleGroup",
    "EventBridge Scheduler schedule and group names are 1-64 characters of letters, digits, '-', '_' and '.'",
    "https://docs.aws.amazon.com/scheduler/latest/APIReference/API_CreateSchedule.html (Name, GroupName)",
)
def _scheduler_names(p, op):
    for k in ("Name", "GroupName"):
        v = p.get(k)
        if isinstance(v, str) and not re.fullmatch(r"[0-9a-zA-Z\-_.]{1,64}", v):
            yield [k], f"{short(v)} ({len(v)} characters)"


MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
# name, low, high, names, wildcards beyond , - * (EventBridge "Schedule expressions for rules")
CRON_FIELDS = [
    ("minutes", 0, 59, None, "/"),
    ("hours", 0, 23, None, "/"),
    ("day-of-month", 1, 31, None, "?/LW"),
    ("month", 1, 12, MONTHS, "/"),
    ("day-of-week", 1, 7, DAYS, "?L#"),
    ("year", 1970, 2199, None, "/"),
]


def _cron_value(text: str, low: int, high: int, names) -> bool:
    if names and text.upper() in names:
        return True
    return text.isdigit() and low <= int(text) <= high


def cron_field_problem(text: str, spec) -> str | None:
    name, low, high, names, extra = spec
    if text == "?":
        return None if "?" in extra else f"'?' is not allowed in {name}"
    for item in text.split(","):
        if item == "*":
            continue
        if "L" in extra and name == "day-of-month" and re.fullmatch(r"L|LW|\d{1,2}W", item):
            if item[:-1].isdigit() and not _cron_value(item[:-1], low, high, None):
                return f"{item!r} out of range in {name}"
            continue
        if "L" in extra and name == "day-of-week" and re.fullmatch(r"L|[1-7]L|[A-Za-z]{3}L", item):
            if item != "L" and not _cron_value(item[:-1], low, high, names):
                return f"{item!r} out of range in {name}"
            continue
        if "#" in extra and "#" in item:
            d, _, nth = item.partition("#")
            if not _cron_value(d, low, high, names) or nth not in ("1", "2", "3", "4", "5"):
                return f"{item!r} is not <day>#<1-5> in {name}"
            continue
        base, slash, step = item.partition("/")
        if slash:
            if "/" not in extra:
                return f"'/' is not allowed in {name}"
            if not step.isdigit() or int(step) < 1:
                return f"{item!r}: step must be a positive number in {name}"
        if base == "*" and slash:
            continue
        lo, dash, hi = base.partition("-")
        if not _cron_value(lo, low, high, names) or (dash and not _cron_value(hi, low, high, names)):
            return f"{item!r} is not a value {low}-{high}{' or a name' if names else ''} in {name}"
    return None


def schedule_expression_problem(expr: str, allow_at: bool) -> str | None:
    m = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", expr)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        if n < 1:
            return "rate value must be a positive number"
        if (n == 1) != (not unit.endswith("s")):
            return f"rate({n} ...) needs the {'singular' if n == 1 else 'plural'} unit"
        return None
    if expr.startswith("rate("):
        return "rate(<value> <minute|minutes|hour|hours|day|days>)"
    m = re.fullmatch(r"cron\((.*)\)", expr)
    if m:
        fields = m.group(1).split()
        if len(fields) != 6:
            return f"cron needs 6 fields (minutes hours day-of-month month day-of-week year), got {len(fields)}"
        for text, spec in zip(fields, CRON_FIELDS):
            why = cron_field_problem(text, spec)
            if why:
                return why
        if (fields[2] == "?") == (fields[4] == "?"):
            return "exactly one of day-of-month and day-of-week must be '?'"
        return None
    if allow_at:
        m = re.fullmatch(r"at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)", expr)
        if m:
            try:
                datetime.datetime.fromisoformat(m.group(1))
                return None
            except ValueError:
                return "at(yyyy-mm-ddThh:mm:ss) with a real date and time"
        return "expected rate(...), cron(...) or at(yyyy-mm-ddThh:mm:ss)"
    return "expected rate(...) or cron(...)"


@rule(
    "events.schedule-expression",
    "events:PutRule,scheduler:CreateSchedule,scheduler:UpdateSchedule",
    "ScheduleExpression must be rate(N unit) (N >= 1, singular unit for 1) or cron(6 fields, one of "
    "day-of-month/day-of-week '?'); Scheduler also at(yyyy-mm-ddThh:mm:ss)",
    "https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-scheduled-rule-pattern.html (Schedule expressions for rules); "
    "https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html",
)
def _schedule_expression(p, op):
    v = p.get("ScheduleExpression")
    if isinstance(v, str):
        why = schedule_expression_problem(v, allow_at=op.startswith("scheduler:"))
        if why:
            yield ["ScheduleExpression"], f"{short(v)}: {why}"


_TAG_CHARS = re.compile(r"[\w\s+\-=._:/@]*")


def _tag_lists(value: Any, path: list):
    """Every list under a member named tags/Tags whose items are key/value structures."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("tags", "Tags") and isinstance(v, list):
                yield path + [k], v
            else:
                yield from _tag_lists(v, path + [k])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _tag_lists(v, path + [i])


@rule(
    "tags.limits",
    "ecs:RegisterTaskDefinition,ecs:RunTask,ecs:TagResource,ecs:CreateCluster,events:PutRule,events:TagResource,"
    "events:PutTargets,scheduler:CreateSchedule,scheduler:UpdateSchedule,scheduler:TagResource,scheduler:CreateScheduleGroup",
    "tags: at most 50, key 1-128 and value 0-256 characters of letters, digits, spaces and + - = . _ : / @; "
    "keys and values must not start with 'aws:' (reserved)",
    "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/ecs-using-tags.html (Tag restrictions); "
    "https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-tagging.html",
)
def _tags(p, op):
    for path, tags in _tag_lists(p, []):
        if len(tags) > 50:
            yield path, f"{len(tags)} tags"
        for i, t in enumerate(tags):
            t = obj(t)
            key = t.get("key", t.get("Key"))
            val = t.get("value", t.get("Value"))
            if isinstance(key, str):
                if not 1 <= len(key) <= 128 or not _TAG_CHARS.fullmatch(key):
                    yield path + [i, "key"], f"key {short(key)}"
                if key.lower().startswith("aws:"):
                    yield path + [i, "key"], f"key {short(key)} uses the reserved aws: prefix"
            if isinstance(val, str):
                if len(val) > 256 or not _TAG_CHARS.fullmatch(val):
                    yield path + [i, "value"], f"value {short(val)}"
                if val.lower().startswith("aws:"):
                    yield path + [i, "value"], f"value {short(val)} uses the reserved aws: prefix"


@rule(
    "ecs.awslogs-options",
    "ecs:RegisterTaskDefinition",
    "the awslogs driver needs the options awslogs-group and awslogs-region, and on Fargate awslogs-stream-prefix",
    "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/using_awslogs.html (awslogs options: Required)",
)
def _awslogs_options(p, op):
    for i, c in enumerate(items(p.get("containerDefinitions"))):
        log = obj(obj(c).get("logConfiguration"))
        if log.get("logDriver") != "awslogs":
            continue
        opts = obj(log.get("options"))
        need = ["awslogs-group", "awslogs-region"] + (["awslogs-stream-prefix"] if is_fargate_taskdef(p) else [])
        missing = [k for k in need if not opts.get(k)]
        if missing:
            yield ["containerDefinitions", i, "logConfiguration", "options"], f"missing {', '.join(missing)}"


@rule(
    "ecs.containers",
    "ecs:RegisterTaskDefinition",
    "at least one essential container (essential defaults to true); container names unique, up to 255 letters, numbers, hyphens and underscores",
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ContainerDefinition.html (name, essential)",
)
def _containers(p, op):
    cs = [obj(c) for c in items(p.get("containerDefinitions"))]
    if cs and not any(c.get("essential", True) is not False for c in cs):
        yield ["containerDefinitions"], "no container is essential"
    seen = set()
    for i, c in enumerate(cs):
        name = c.get("name")
        if isinstance(name, str):
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", name):
                yield ["containerDefinitions", i, "name"], f"got {short(name)}"
            if name in seen:
                yield ["containerDefinitions", i, "name"], f"{short(name)} is used twice"
            seen.add(name)


@rule(
    "ecs.task-definition-size",
    "ecs:RegisterTaskDefinition",
    "a task definition is at most 64 KiB",
    "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/service-quotas.html (Task definition size)",
)
def _taskdef_size(p, op):
    n = len(json.dumps(p, separators=(",", ":"), default=str).encode())
    if n > 64 * 1024:
        yield [], f"{n} bytes"


@rule(
    "ecs.overrides-size",
    "ecs:RunTask",
    "RunTask container overrides are at most 8192 characters of JSON (ECS: InvalidParameterException: Container Overrides length must be at most 8192)",
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ContainerOverride.html; "
    "https://github.com/aws-samples/sample-autonomous-cloud-coding-agents/issues/502",
)
def _overrides_size(p, op):
    co = obj(p.get("overrides")).get("containerOverrides")
    if isinstance(co, list):
        n = len(json.dumps(co, separators=(",", ":")))
        if n > 8192:
            yield ["overrides", "containerOverrides"], f"{n} characters"


@rule(
    "ecs.started-by",
    "ecs:RunTask,ecs:StartTask",
    "startedBy is up to 128 letters, numbers, hyphens, forward slashes and underscores",
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RunTask.html (startedBy)",
)
def _started_by(p, op):
    v = p.get("startedBy")
    if isinstance(v, str) and not re.fullmatch(r"[A-Za-z0-9_/-]{1,128}", v):
        yield ["startedBy"], f"got {short(v)}"


@rule(
    "events.rule-trigger",
    "events:PutRule",
    "a rule needs an EventPattern or a ScheduleExpression, and schedules run only on the default event bus",
    "https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_PutRule.html",
)
def _rule_trigger(p, op):
    if not p.get("EventPattern") and not p.get("ScheduleExpression"):
        yield [], "neither EventPattern nor ScheduleExpression"
    bus = p.get("EventBusName")
    if p.get("ScheduleExpression") and isinstance(bus, str) and bus not in ("default",) and not bus.endswith(":event-bus/default"):
        yield ["EventBusName"], f"schedule on event bus {short(bus)}"


@rule(
    "cloudwatch.alarm-window",
    "cloudwatch:PutMetricAlarm",
    "Period is 10, 20, 30 or a multiple of 60; Period x EvaluationPeriods is at most 604800 s (7 days), and at most "
    "86400 s (1 day) when Period is under 3600; DatapointsToAlarm is at most EvaluationPeriods",
    "https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricAlarm.html (Period, EvaluationPeriods, DatapointsToAlarm)",
)
def _alarm_window(p, op):
    period, n, m = p.get("Period"), p.get("EvaluationPeriods"), p.get("DatapointsToAlarm")
    if isinstance(period, int) and period not in (10, 20, 30) and period % 60:
        yield ["Period"], f"got {period}"
    if isinstance(period, int) and isinstance(n, int):
        limit = 86400 if period < 3600 else 604800
        if period * n > limit:
            yield ["EvaluationPeriods"], f"{period} x {n} = {period * n} s is over {limit} s"
    if isinstance(m, int) and isinstance(n, int) and m > n:
        yield ["DatapointsToAlarm"], f"{m} is more than EvaluationPeriods {n}"


@rule(
    "cloudwatch.alarm-metric",
    "cloudwatch:PutMetricAlarm",
    "an alarm names one metric (MetricName and Namespace with exactly one of Statistic and ExtendedStatistic) or "
    "Metrics, not both; TreatMissingData is breaching, notBreaching, ignore or missing; actions are ARNs",
    "https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricAlarm.html; "
    "https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/AlarmThatSendsEmail.html#alarms-and-missing-data",
)
def _alarm_metric(p, op):
    single = any(p.get(k) is not None for k in ("MetricName", "Namespace", "Statistic", "ExtendedStatistic"))
    if single and p.get("Metrics"):
        yield ["Metrics"], "given with MetricName/Namespace/Statistic"
    if not single and not p.get("Metrics"):
        yield [], "neither MetricName nor Metrics"
    if single:
        for k in ("MetricName", "Namespace"):
            if not p.get(k):
                yield [k], "missing"
        if (p.get("Statistic") is None) == (p.get("ExtendedStatistic") is None):
            yield ["Statistic"], "give exactly one of Statistic and ExtendedStatistic"
    tmd = p.get("TreatMissingData")
    if tmd is not None and tmd not in ("breaching", "notBreaching", "ignore", "missing"):
        yield ["TreatMissingData"], f"got {short(str(tmd))}"
    for k in ("AlarmActions", "OKActions", "InsufficientDataActions"):
        for i, a in enumerate(items(p.get(k))):
            if not isinstance(a, str) or not a.startswith("arn:"):
                yield [k, i], f"got {short(str(a))}"


EVENT_PATTERN_MATCHERS = {"prefix", "suffix", "anything-but", "numeric", "exists", "cidr", "equals-ignore-case", "wildcard"}


def _pattern_problems(node: Any, path: list) -> Iterator[tuple[list, str]]:
    if not isinstance(node, dict) or not node:
        yield path, "must be a non-empty JSON object"
        return
    for k, v in node.items():
        if k == "$or":
            if not isinstance(v, list) or len(v) < 2:
                yield path + [k], "$or needs a list of at least two patterns"
                continue
            for i, alt in enumerate(v):
                yield from _pattern_problems(alt, path + [k, i])
        elif isinstance(v, dict):
            yield from _pattern_problems(v, path + [k])
        elif isinstance(v, list):
            if not v:
                yield path + [k], "an empty list matches nothing"
            for i, m in enumerate(v):
                if isinstance(m, dict) and (len(m) != 1 or next(iter(m)) not in EVENT_PATTERN_MATCHERS):
                    yield path + [k, i], f"unknown matcher {short(json.dumps(m))}"
        else:
            yield path + [k], f"a leaf must be a list of values or matchers, got {short(json.dumps(v))}"


@rule(
    "events.event-pattern",
    "events:PutRule,events:TestEventPattern",
    "EventPattern is a JSON object whose leaves are lists of values or matchers (prefix, suffix, anything-but, numeric, "
    "exists, cidr, equals-ignore-case, wildcard); $or takes a list of at least two patterns",
    "https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-event-patterns.html; "
    "https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-create-pattern-operators.html",
)
def _event_pattern(p, op):
    text = p.get("EventPattern")
    if not isinstance(text, str):
        return
    try:
        doc = json.loads(text)
    except ValueError as e:
        yield ["EventPattern"], f"not JSON ({e})"
        return
    for path, what in _pattern_problems(doc, []):
        yield ["EventPattern"], f"{'.'.join(str(x) for x in path) or '(top)'}: {what}"


@rule(
    "events.input-transformer",
    "events:PutTargets",
    "InputTransformer: InputPathsMap keys are letters, digits, '_' and '-' (not starting with 'aws.'), each value a "
    "JSON path starting with '$'",
    "https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_InputTransformer.html; "
    "https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-transform-target-input.html",
)
def _input_transformer(p, op):
    for i, t in enumerate(items(p.get("Targets"))):
        it = obj(obj(t).get("InputTransformer"))
        if not it:
            continue
        base = ["Targets", i, "InputTransformer"]
        paths = obj(it.get("InputPathsMap"))
        for k, v in paths.items():
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", k) or k.startswith("aws."):
                yield base + ["InputPathsMap", MapKey(k)], "bad key"
            if not isinstance(v, str) or not v.startswith("$"):
                yield base + ["InputPathsMap", MapKey(k)], f"path {short(str(v))} does not start with '$'"


@rule(
    "scheduler.timezone",
    "scheduler:CreateSchedule,scheduler:UpdateSchedule",
    "ScheduleExpressionTimezone is an IANA time zone name",
    "https://docs.aws.amazon.com/scheduler/latest/APIReference/API_CreateSchedule.html (ScheduleExpressionTimezone)",
)
def _scheduler_timezone(p, op):
    tz = p.get("ScheduleExpressionTimezone")
    zones = zoneinfo.available_timezones()  # empty without the system's tz database: then unchecked
    if isinstance(tz, str) and zones and tz != "UTC" and tz not in zones:
        yield ["ScheduleExpressionTimezone"], f"got {short(tz)}"


@rule(
    "scheduler.flexible-window",
    "scheduler:CreateSchedule,scheduler:UpdateSchedule",
    "FlexibleTimeWindow.MaximumWindowInMinutes (1-1440) is required with Mode FLEXIBLE and must be absent with Mode OFF",
    "https://docs.aws.amazon.com/scheduler/latest/APIReference/API_FlexibleTimeWindow.html",
)
def _scheduler_flexible_window(p, op):
    w = obj(p.get("FlexibleTimeWindow"))
    mode, window = w.get("Mode"), w.get("MaximumWindowInMinutes")
    if mode == "OFF" and window is not None:
        yield ["FlexibleTimeWindow", "MaximumWindowInMinutes"], f"{window} with Mode OFF"
    if mode == "FLEXIBLE" and window is None:
        yield ["FlexibleTimeWindow"], "Mode FLEXIBLE without MaximumWindowInMinutes"


S3_OBJECT_OPS = (
    "s3:PutObject,s3:GetObject,s3:HeadObject,s3:DeleteObject,s3:CopyObject,s3:CreateMultipartUpload,"
    "s3:UploadPart,s3:UploadPartCopy,s3:CompleteMultipartUpload,s3:AbortMultipartUpload,s3:ListParts,"
    "s3:GetObjectTagging,s3:PutObjectTagging,s3:GetObjectAttributes"
)


@rule(
    "s3.bucket-name",
    "s3:CreateBucket",
    "bucket names are 3-63 characters of lowercase letters, digits, '.' and '-', begin and end with a letter or digit, "
    "no '..', not an IP address, no xn-- prefix or -s3alias suffix",
    "https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html",
)
def _bucket_name(p, op):
    b = p.get("Bucket")
    if not isinstance(b, str):
        return
    if (
        not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", b)
        or ".." in b
        or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", b)
        or b.startswith(("xn--", "sthree-"))
        or b.endswith(("-s3alias", "--ol-s3"))
    ):
        yield ["Bucket"], f"got {short(b)}"


@rule(
    "s3.key",
    S3_OBJECT_OPS,
    "object keys are 1-1024 bytes of UTF-8",
    "https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html",
)
def _key(p, op):
    k = p.get("Key")
    if isinstance(k, str) and not 1 <= len(k.encode("utf-8", "surrogatepass")) <= 1024:
        yield ["Key"], f"{len(k.encode('utf-8', 'surrogatepass'))} bytes"


@rule(
    "s3.sizes",
    "s3:PutObject,s3:UploadPart,s3:CompleteMultipartUpload",
    "PutObject and each part at most 5 GiB; part numbers 1-10000; CompleteMultipartUpload lists its parts in ascending order",
    "https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html (multipart upload limits); "
    "https://docs.aws.amazon.com/AmazonS3/latest/API/API_CompleteMultipartUpload.html (InvalidPartOrder)",
)
def _s3_sizes(p, op):
    n = p.get("ContentLength")
    body = p.get("Body")
    size = n if isinstance(n, int) else (len(body) if body is not None and hasattr(body, "__len__") else None)
    if op in ("s3:PutObject", "s3:UploadPart") and size is not None and size > 5 << 30:
        yield ["ContentLength"], f"{size} bytes"
    pn = p.get("PartNumber")
    if isinstance(pn, int) and not 1 <= pn <= 10000:
        yield ["PartNumber"], f"got {pn}"
    parts = items(obj(p.get("MultipartUpload")).get("Parts"))
    nums = [obj(x).get("PartNumber") for x in parts]
    if op == "s3:CompleteMultipartUpload":
        if len(parts) > 10000:
            yield ["MultipartUpload", "Parts"], f"{len(parts)} parts"
        for i, (a, b) in enumerate(zip(nums, nums[1:]), 1):
            if isinstance(a, int) and isinstance(b, int) and b <= a:
                yield ["MultipartUpload", "Parts", i, "PartNumber"], f"{b} after {a}"
                break


@rule(
    "s3.metadata",
    "s3:PutObject,s3:CreateMultipartUpload,s3:CopyObject",
    "user-defined metadata (x-amz-meta-*) is at most 2 KB, keys and values counted in UTF-8 bytes",
    "https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingMetadata.html (User-defined object metadata)",
)
def _s3_metadata(p, op):
    md = obj(p.get("Metadata"))
    n = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in md.items())
    if n > 2048:
        yield ["Metadata"], f"{n} bytes"


@rule(
    "s3.sse-kms",
    "s3:PutObject,s3:CreateMultipartUpload,s3:CopyObject",
    "SSEKMSKeyId (x-amz-server-side-encryption-aws-kms-key-id) only with ServerSideEncryption aws:kms or aws:kms:dsse "
    "(S3: InvalidArgument: Server Side Encryption with AWS KMS managed key requires HTTP header x-amz-server-side-encryption : aws:kms)",
    "https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html (x-amz-server-side-encryption-aws-kms-key-id)",
)
def _sse_kms(p, op):
    if p.get("SSEKMSKeyId") and p.get("ServerSideEncryption") not in ("aws:kms", "aws:kms:dsse"):
        yield ["SSEKMSKeyId"], f"with ServerSideEncryption {short(p.get('ServerSideEncryption'))}"


@rule(
    "s3.upload-state",
    "s3:UploadPart,s3:UploadPartCopy,s3:CompleteMultipartUpload,s3:AbortMultipartUpload,s3:ListParts",
    "no call for a multipart upload after it was completed or aborted (S3: NoSuchUpload: The specified multipart "
    "upload does not exist ... might have been aborted or completed); needs response statuses in the recording",
    "https://docs.aws.amazon.com/AmazonS3/latest/API/API_AbortMultipartUpload.html; "
    "https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html (NoSuchUpload)",
    sequence=True,
)
def _upload_state(p, op, seq):
    uid = p.get("UploadId")
    if not isinstance(uid, str):
        return
    ended = seq.state.get(uid)
    if ended:
        yield ["UploadId"], f"upload {short(uid, 24)} was {ended[0]} by request {ended[1]}"
    elif seq.succeeded and op in ("s3:CompleteMultipartUpload", "s3:AbortMultipartUpload"):
        seq.state[uid] = ("completed" if op == "s3:CompleteMultipartUpload" else "aborted", seq.n)
