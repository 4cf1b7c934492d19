"""AWS contract checker: holds recorded HTTP requests to AWS's published service models
(botocore's JSON models) and to a short table of rules real services enforce and moto does not.

moto accepts many requests real AWS rejects, so a test that only talks to moto can pass while
every real run fails. This checker reads what backhaul actually sent (a JSON Lines recording,
one request per line, see README.md) and reports every request the real service would refuse.

Usage:
    check.py RECORDED.jsonl [--expect ecs:RegisterTaskDefinition,events:PutRule,...]
    check.py --rules-markdown        # the rules table, for README.md

Exit status: 0 all requests conform; 1 a violation, or an --expect operation was not seen;
2 the recording cannot be read; 3 the checker itself failed (a bug: traceback on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import botocore  # noqa: E402

from rules import RULES, Sequence  # noqa: E402
from shapes import (  # noqa: E402
    HEURISTIC_SERVICES,
    SKIPPED_PATTERNS,
    Placeholder,
    Streamed,
    available,
    fmt_path,
    model,
    validate,
)
from wire import Identified, Request, Unreadable, from_json, identify, load  # noqa: E402

@dataclass
class Violation:
    op: str  # "ecs:RegisterTaskDefinition"
    path: str  # "containerDefinitions[0].logConfiguration.options.awslogs-create-group"
    rule: str  # rule id, "model.required", "ecs.awslogs-create-group", ...
    text: str  # the rule's text plus what was found
    source: str
    request: int  # 1-based line number in the recording

    def line(self) -> str:
        return f"{self.op} {self.path or '(request)'}: {self.text} [{self.rule}; {self.source}] (request {self.request})"


# ---------------------------------------------------------------------------------------------
# Checking a recording
# ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    checked: int = 0
    state: dict = field(default_factory=dict)  # per sequence rule, across requests


def model_source(service: str) -> str:
    m = model(service)
    return f"botocore {botocore.__version__} model {service} {m.api_version}"


def check_request(req: Request, report: Report, strict: bool = False) -> None:
    ident = identify(req)
    for note in req.notes:
        report.warnings.append(f"warning: request {req.n}: {note}")
    if ident.service == "moto-api":
        return
    report.checked += 1
    if ident.service is None:
        report.warnings.append(f"warning: request {req.n} ({req.method} {req.path}): unknown service: {ident.why}")
        return
    if ident.operation is None:
        text = f"cannot identify the operation of {req.method} {req.path}{'?' if req.query else ''}{urllib.parse.urlencode(req.query)}: {ident.why}"
        if ident.service in HEURISTIC_SERVICES and not strict:
            report.warnings.append(f"warning: request {req.n}: {ident.service}: {text}")
        else:
            report.violations.append(Violation(f"{ident.service}:?", "", "model.operation", text, model_source(ident.service), req.n))
        report.counts[ident.op] = report.counts.get(ident.op, 0) + 1
        return
    report.counts[ident.op] = report.counts.get(ident.op, 0) + 1
    if ident.params is None:
        report.warnings.append(f"warning: request {req.n}: {ident.op}: input not checked: {ident.why}")
        return
    op_model = model(ident.service).operation_model(ident.operation)
    if op_model.http_checksum.get("requestChecksumRequired") or op_model.http_checksum_required:
        # S3 refuses these without an integrity header (InvalidRequest: Missing required header
        # for this request: Content-MD5); the checksum may also come as an aws-chunked trailer.
        if "content-md5" not in req.headers and not any(k.startswith("x-amz-checksum-") for k in req.headers):
            ident.problems.append(("", "model.checksum", "the model requires a request checksum: Content-MD5 or an x-amz-checksum-* header"))
    _report_params(ident, report, req.n, req.status)


def _report_params(ident: Identified, report: Report, n: int, status: int | None = None) -> None:
    op_model = model(ident.service).operation_model(ident.operation)
    found = list(ident.problems)
    if op_model.input_shape is not None:
        validate(ident.params, op_model.input_shape, [], found)
    rule_found = []
    for r in RULES:
        if ident.op in r.ops:
            args = (ident.params or {}, ident.op)
            if r.sequence:
                args += (Sequence(report.state.setdefault(r.id, {}), n, status),)
            for path, detail in r.check(*args):
                rule_found.append(Violation(ident.op, fmt_path(path), r.id, f"{r.text}: {detail}", r.source, n))
    # A rule restating a model constraint (rule names) speaks for it: one line per breach.
    covered = {v.path for v in rule_found}
    for path, rid, text in found:
        if rid in ("model.pattern", "model.length") and path in covered:
            continue
        report.violations.append(Violation(ident.op, path, rid, text, model_source(ident.service), n))
    report.violations.extend(rule_found)


def check(requests: list[Request], strict: bool = False) -> Report:
    report = Report()
    for req in requests:
        check_request(req, report, strict)
    return report


def load_plan(path: str) -> list[tuple[str, dict]]:
    """`schedule --dry-run` output: {"requests": [{"operation": "ecs:RegisterTaskDefinition",
    "input": {...}}, ...]} (or the bare list): each input in the API's JSON spelling."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise Unreadable(f"{path}: {e}") from e
    reqs = doc.get("requests") if isinstance(doc, dict) else doc
    if not isinstance(reqs, list):
        raise Unreadable(f"{path}: no \"requests\" list")
    out = []
    for i, r in enumerate(reqs, 1):
        if not isinstance(r, dict) or not isinstance(r.get("operation"), str) or ":" not in r["operation"] or not isinstance(r.get("input"), dict):
            raise Unreadable(f"{path}: requests[{i - 1}] needs \"operation\": \"service:Operation\" and an \"input\" object")
        out.append((r["operation"], r["input"]))
    return out


def placeholders(value: Any) -> Any:
    if isinstance(value, str) and re.fullmatch(r"<[^<>]+>", value):
        return Placeholder(value)
    if isinstance(value, list):
        return [placeholders(v) for v in value]
    if isinstance(value, dict):
        return {k: placeholders(v) for k, v in value.items()}
    return value


def check_plan(plan: list[tuple[str, dict]]) -> Report:
    """Checks planned inputs as if they had been sent (no wire decoding)."""
    report = Report()
    for n, (op, body) in enumerate(plan, 1):
        service, _, operation = op.partition(":")
        report.checked += 1
        if not available(service) or operation not in model(service).operation_names:
            report.violations.append(Violation(op, "", "model.operation", f"{op} is not an operation botocore knows", f"botocore {botocore.__version__}", n))
            continue
        report.counts[op] = report.counts.get(op, 0) + 1
        shape = model(service).operation_model(operation).input_shape
        body = placeholders(body)
        ident = Identified(service, operation, from_json(body, shape, [], []) if shape else body)
        _report_params(ident, report, n)
    return report


def rules_markdown() -> str:
    lines = ["| id | operations | rule | source |", "|---|---|---|---|"]
    for r in RULES:
        src = "; ".join(f"<{s.strip().split(' ', 1)[0]}>" + (f" {s.strip().split(' ', 1)[1]}" if " " in s.strip() else "") if s.strip().startswith("http") else s.strip() for s in r.source.split(";"))
        lines.append(f"| `{r.id}` | {', '.join(r.ops)} | {r.text.replace('|', '/')} | {src} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Check recorded AWS requests against botocore's models and the rules table.")
    ap.add_argument("recording", nargs="?", help="JSON Lines file, one recorded request per line")
    ap.add_argument("--plan", metavar="PLAN_JSON", help="check a `schedule --dry-run` plan instead of a recording")
    ap.add_argument("--expect", action="append", default=[], help="comma-separated service:Operation list that must appear")
    ap.add_argument("--strict", action="store_true", help="unidentified S3 requests are violations, not warnings")
    ap.add_argument("--verbose", action="store_true", help="also list model patterns Python could not compile")
    ap.add_argument("--dump", action="store_true", help="print each request's operation and decoded input (debugging)")
    ap.add_argument("--rules-markdown", action="store_true", help="print the rules table as Markdown and exit")
    args = ap.parse_args(argv)
    if args.rules_markdown:
        print(rules_markdown())
        return 0
    if bool(args.recording) == bool(args.plan):
        ap.error("give a recording or --plan PLAN_JSON")
    try:
        requests = [] if args.plan else load(args.recording)
        plan = load_plan(args.plan) if args.plan else None
    except Unreadable as e:
        print(f"check.py: {e}", file=sys.stderr)
        return 2
    if args.dump:
        for req in requests:
            ident = identify(req)
            print(f"#{req.n} {req.method} {req.path} -> {ident.op} {ident.why}")
            print("   ", json.dumps(ident.params, default=lambda o: f"<{len(o)} bytes>" if isinstance(o, Streamed) else str(o)))
    try:
        report = check_plan(plan) if plan is not None else check(requests, args.strict)
    except Exception:  # noqa: BLE001 - a checker bug must not read as a violation (exit 1)
        traceback.print_exc()
        print("check.py: internal error (a bug in the checker, not in the recording)", file=sys.stderr)
        return 3
    for w in report.warnings:
        print(w)
    for v in report.violations:
        print(v.line())
    missing = []
    for group in args.expect:
        for op in filter(None, (x.strip() for x in group.split(","))):
            if report.counts.get(op, 0) == 0:
                missing.append(op)
                print(f"{op}: expected in the recording but not seen")
    if args.verbose and SKIPPED_PATTERNS:
        for pat in sorted(SKIPPED_PATTERNS):
            print(f"note: pattern not checked (Python re cannot compile it): {pat}")
    ops = ", ".join(f"{k}={v}" for k, v in sorted(report.counts.items()))
    what = "planned requests" if plan is not None else "requests"
    print(f"checked {report.checked} {what} ({ops}), {len(report.violations)} violations" + (f", {len(missing)} expected operations missing" if missing else ""))
    return 1 if report.violations or missing else 0


if __name__ == "__main__":
    sys.exit(main())
