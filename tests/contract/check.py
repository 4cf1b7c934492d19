#!/usr/bin/env python3
"""AWS contract checker: holds recorded HTTP requests to AWS's published service models
(botocore's JSON models) and to a short table of rules real services enforce and moto does not.

moto accepts many requests real AWS rejects, so a test that only talks to moto can pass while
every real run fails. This checker reads what backhaul actually sent (a JSON Lines recording,
one request per line, see README.md) and reports every request the real service would refuse.

Usage:
    check.py RECORDED.jsonl [--expect ecs:RegisterTaskDefinition,events:PutRule,...]
    check.py --rules-markdown        # the rules table, for README.md

Exit status: 0 all requests conform; 1 a violation, or an --expect operation was not seen;
2 the recording cannot be read.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import email.utils
import json
import re
import sys
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import botocore.session

# ---------------------------------------------------------------------------------------------
# Services and models
# ---------------------------------------------------------------------------------------------

# Services backhaul (or its tests) talk to. x-amz-target prefixes and query-protocol versions are
# read from these models, not hard-coded. A request for another service is still identified when
# its SigV4 credential scope names a service botocore has a model for.
KNOWN_SERVICES = (
    "ecs",
    "events",
    "scheduler",
    "logs",
    "secretsmanager",
    "ssm",
    "kms",
    "cloudformation",
    "iam",
    "sts",
    "s3",
    "ec2",
)

# Services whose operation matching is heuristic (REST path templates shared by many
# operations). An unidentified request for one of these is a warning, not a violation, so a
# parsing gap cannot make a test flaky; --strict makes it a violation.
HEURISTIC_SERVICES = ("s3",)

_SESSION = botocore.session.get_session()
_MODELS: dict[str, Any] = {}


def model(service: str):
    if service not in _MODELS:
        _MODELS[service] = _SESSION.get_service_model(service)
    return _MODELS[service]


def available(service: str) -> bool:
    return service in _available_services()


_AVAILABLE: list[str] = []


def _available_services() -> list[str]:
    if not _AVAILABLE:
        _AVAILABLE.extend(_SESSION.get_available_services())
    return _AVAILABLE


def target_prefixes() -> dict[str, str]:
    """x-amz-target prefix → service name, from the known services' metadata."""
    out = {}
    for svc in KNOWN_SERVICES:
        prefix = model(svc).metadata.get("targetPrefix")
        if prefix:
            out[prefix] = svc
    return out


def signing_names() -> dict[str, str]:
    """SigV4 credential-scope service → service name."""
    out = {}
    for svc in KNOWN_SERVICES:
        md = model(svc).metadata
        out.setdefault(md.get("signingName") or md.get("endpointPrefix") or svc, svc)
    return out


# ---------------------------------------------------------------------------------------------
# Violations and the request context
# ---------------------------------------------------------------------------------------------


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


def fmt_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif isinstance(p, MapKey):
            out += f".{p.key}" if re.fullmatch(r"[A-Za-z0-9_\-:]+", p.key) else f"[{json.dumps(p.key)}]"
        else:
            out += f".{p}" if out else str(p)
    return out


@dataclass(frozen=True)
class MapKey:
    key: str


def short(value: Any, limit: int = 80) -> str:
    s = json.dumps(value, default=str)
    return s if len(s) <= limit else s[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Model validation
# ---------------------------------------------------------------------------------------------

_PATTERNS: dict[str, Any] = {}
SKIPPED_PATTERNS: set[str] = set()


def compiled(pattern: str):
    # The models' patterns are Java/ECMAScript regexes. Most compile in Python; ones that do not
    # (\p{L} Unicode classes, for instance) are skipped and listed by --verbose, never guessed at.
    if pattern not in _PATTERNS:
        try:
            _PATTERNS[pattern] = re.compile(pattern)
        except re.error:
            _PATTERNS[pattern] = None
            SKIPPED_PATTERNS.add(pattern)
    return _PATTERNS[pattern]


def is_union(shape) -> bool:
    return bool(shape.metadata.get("union"))


def validate(value: Any, shape, path: list, out: list[tuple[str, str, str]]) -> None:
    """Appends (path, rule id, text) for each way `value` breaks `shape`."""
    p = fmt_path(path)
    if value is None:
        out.append((p, "model.null", "null is not a valid value (omit the member instead)"))
        return
    t = shape.type_name
    md = shape.metadata
    if t == "structure":
        if md.get("document"):
            return
        if not isinstance(value, dict):
            out.append((p, "model.type", f"expected a structure ({shape.name}), got {short(value)}"))
            return
        for key, v in value.items():
            if key not in shape.members:
                out.append((fmt_path(path + [key]), "model.unknown", f"{shape.name} has no member {key!r}"))
                continue
            validate(v, shape.members[key], path + [key], out)
        for req in shape.required_members:
            if req not in value:
                out.append((fmt_path(path + [req]), "model.required", f"required member of {shape.name} is missing"))
        if is_union(shape) and len([k for k, v in value.items() if v is not None]) != 1:
            out.append((p, "model.union", f"{shape.name} is a union: set exactly one member"))
        return
    if t == "list":
        if not isinstance(value, list):
            out.append((p, "model.type", f"expected a list ({shape.name}), got {short(value)}"))
            return
        _length(len(value), md, p, "items", out)
        for i, item in enumerate(value):
            validate(item, shape.member, path + [i], out)
        return
    if t == "map":
        if not isinstance(value, dict):
            out.append((p, "model.type", f"expected a map ({shape.name}), got {short(value)}"))
            return
        _length(len(value), md, p, "entries", out)
        for k, v in value.items():
            validate(k, shape.key, path + [MapKey(str(k))], out)
            validate(v, shape.value, path + [MapKey(str(k))], out)
        return
    if t == "string":
        if not isinstance(value, str):
            out.append((p, "model.type", f"expected a string, got {short(value)}"))
            return
        if isinstance(value, Placeholder):
            return
        enum = md.get("enum")
        if enum and value not in enum:
            out.append((p, "model.enum", f"{short(value)} is not one of {', '.join(enum)}"))
        _length(len(value), md, p, "characters", out)
        pattern = md.get("pattern")
        if pattern:
            rx = compiled(pattern)
            if rx is not None and not rx.fullmatch(value):
                out.append((p, "model.pattern", f"{short(value)} does not match the pattern {pattern}"))
        return
    if t in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            out.append((p, "model.type", f"expected an {t}, got {short(value)}"))
            return
        limit = 2**31 if t == "integer" else 2**63
        if not -limit <= value < limit:
            out.append((p, "model.range", f"{value} does not fit a 32-bit integer" if t == "integer" else f"{value} does not fit a long"))
        _range(value, md, p, out)
        return
    if t in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out.append((p, "model.type", f"expected a number, got {short(value)}"))
            return
        _range(value, md, p, out)
        return
    if t == "boolean":
        if not isinstance(value, bool):
            out.append((p, "model.type", f"expected a boolean, got {short(value)}"))
        return
    if t == "timestamp":
        if isinstance(value, bool) or not isinstance(value, (int, float, str, datetime.datetime)):
            out.append((p, "model.type", f"expected a timestamp, got {short(value)}"))
        elif isinstance(value, str) and parse_timestamp(value) is None:
            out.append((p, "model.type", f"expected a timestamp, got {short(value)}"))
        return
    if t == "blob":
        if isinstance(value, (bytes, bytearray, Streamed)):
            n = len(value)
        elif isinstance(value, str):
            try:
                n = len(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                out.append((p, "model.type", "expected a base64 blob"))
                return
        else:
            out.append((p, "model.type", f"expected a blob, got {short(value)}"))
            return
        _length(n, md, p, "bytes", out)
        return


def _length(n: int, md: dict, p: str, what: str, out: list) -> None:
    if "min" in md and n < md["min"]:
        out.append((p, "model.length", f"{n} {what}, at least {md['min']} required"))
    if "max" in md and n > md["max"]:
        out.append((p, "model.length", f"{n} {what}, at most {md['max']} allowed"))


def _range(v, md: dict, p: str, out: list) -> None:
    if "min" in md and v < md["min"]:
        out.append((p, "model.range", f"{v} is below the minimum {md['min']}"))
    if "max" in md and v > md["max"]:
        out.append((p, "model.range", f"{v} is above the maximum {md['max']}"))


class Streamed:
    """A payload blob (S3 object bytes): only its length matters."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def parse_timestamp(s: str):
    s = s.strip()
    try:
        return float(s)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(s)
    except (TypeError, ValueError):
        return None


def from_text(text: str, shape) -> Any:
    """A scalar sent as text (query string, header, URI label, XML) in the shape's type; text
    that does not convert is returned as is, so validation reports the type mismatch."""
    t = shape.type_name
    if t in ("integer", "long"):
        return int(text) if re.fullmatch(r"-?\d+", text.strip()) else text
    if t in ("float", "double"):
        try:
            return float(text)
        except ValueError:
            return text
    if t == "boolean":
        return {"true": True, "false": False}.get(text, text)
    if t == "blob":
        return text.encode()
    return text


# ---------------------------------------------------------------------------------------------
# Request decoding: one recorded line → (service, operation, params in model member names)
# ---------------------------------------------------------------------------------------------


@dataclass
class Request:
    n: int
    method: str
    path: str  # raw (percent-encoded) path
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    notes: list[str] = field(default_factory=list)
    omitted: int | None = None  # length of a body the recording left out


class Unreadable(Exception):
    pass


def load(path: str) -> list[Request]:
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise Unreadable(f"{path}: {e}") from e
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out.append(to_request(i, rec))
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            raise Unreadable(f"{path}:{i}: not a recorded request ({e})") from e
    return out


def to_request(n: int, rec: dict) -> Request:
    target = rec["target"]
    if not isinstance(target, str) or not isinstance(rec["method"], str):
        raise TypeError("method and target must be strings")
    if target.startswith(("http://", "https://")):
        u = urllib.parse.urlsplit(target)
        target = u.path + ("?" + u.query if u.query else "")
    path, _, qs = target.partition("?")
    headers = {str(k).lower(): str(v) for k, v in (rec.get("headers") or {}).items()}
    body = base64.b64decode(rec.get("body_b64") or "", validate=True)
    omitted = rec.get("body_omitted")
    req = Request(n, rec["method"].upper(), path or "/", urllib.parse.parse_qsl(qs, keep_blank_values=True), headers, body)
    if omitted:
        # A large payload the recorder left out (record_proxy.py --max-body): only its length is
        # known, which is all a blob payload is checked for.
        req.omitted = int(omitted)
    elif "aws-chunked" in headers.get("content-encoding", "").lower():
        try:
            req.body, trailers = decode_aws_chunked(body)
            for k, v in trailers.items():
                req.headers.setdefault(k, v)
        except ValueError as e:
            req.notes.append(f"aws-chunked body could not be decoded ({e}); body not checked")
            req.body = b""
    return req


def decode_aws_chunked(body: bytes) -> tuple[bytes, dict[str, str]]:
    """The aws-chunked framing S3 uploads use: `<hex size>[;chunk-signature=..]\\r\\n<data>\\r\\n`
    chunks, a zero-size chunk, then trailing headers (the checksum) and an empty line."""
    out = bytearray()
    i = 0
    while True:
        j = body.find(b"\r\n", i)
        if j < 0:
            raise ValueError("chunk header without CRLF")
        size_text = body[i:j].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as e:
            raise ValueError(f"bad chunk size {size_text[:20]!r}") from e
        i = j + 2
        if size == 0:
            break
        out += body[i : i + size]
        i += size
        if body[i : i + 2] != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        i += 2
    trailers = {}
    for line in body[i:].decode("latin-1").split("\r\n"):
        if ":" in line:
            k, v = line.split(":", 1)
            trailers[k.strip().lower()] = v.strip()
    return bytes(out), trailers


def credential_scope_service(req: Request) -> str | None:
    auth = req.headers.get("authorization", "")
    m = re.search(r"Credential=[^/,\s]+/\d{8}/[^/]+/([^/]+)/aws4_request", auth)
    if m:
        return m.group(1)
    for k, v in req.query:
        if k.lower() == "x-amz-credential":
            parts = v.split("/")
            if len(parts) >= 5:
                return parts[3]
    return None


@dataclass
class Identified:
    service: str | None  # None: unknown service
    operation: str | None  # None: service known, operation not identified
    params: dict | None = None
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # decoding problems
    why: str = ""

    @property
    def op(self) -> str:
        return f"{self.service or '?'}:{self.operation or '?'}"


def identify(req: Request) -> Identified:
    if req.path.startswith("/moto-api/"):
        return Identified("moto-api", "control")
    target = req.headers.get("x-amz-target")
    scope = credential_scope_service(req)
    service = None
    if target and "." in target:
        prefix, _, op = target.rpartition(".")
        service = target_prefixes().get(prefix)
        if service is None and scope:
            svc = signing_names().get(scope, scope)
            if available(svc) and model(svc).metadata.get("targetPrefix") == prefix:
                service = svc
        if service is None:
            return Identified(None, None, why=f"x-amz-target {target!r} names no known service")
        return decode_json_rpc(req, service, op)
    if scope:
        service = signing_names().get(scope, scope)
        if not available(service):
            return Identified(None, None, why=f"credential scope service {scope!r} has no botocore model")
    form = form_params(req)
    if service is None and form is not None and "Action" in form:
        version = form.get("Version")
        for svc in KNOWN_SERVICES:
            if model(svc).protocol in ("query", "ec2") and model(svc).api_version == version:
                action = form["Action"]
                if action in model(svc).operation_names:
                    service = svc
                    break
    if service is None:
        return Identified(None, None, why="no x-amz-target, no SigV4 credential scope, no query Action")
    protocol = model(service).protocol
    if protocol in ("query", "ec2"):
        return decode_query(req, service, form or {})
    if protocol in ("rest-json", "rest-xml"):
        return decode_rest(req, service)
    if protocol == "json":
        return Identified(service, None, why="JSON-protocol request without x-amz-target")
    return Identified(service, None, why=f"protocol {protocol} is not supported by the checker")


def form_params(req: Request) -> dict | None:
    ctype = req.headers.get("content-type", "")
    if req.method != "POST" or "x-www-form-urlencoded" not in ctype:
        return None
    try:
        pairs = urllib.parse.parse_qsl(req.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return None
    return dict(pairs)


def ser_name(member_name: str, shape) -> str:
    return shape.serialization.get("name", member_name)


def from_json(value: Any, shape, path: list, problems: list) -> Any:
    """JSON body value → the same value keyed by model member names (JSON protocols may rename
    members with locationName/jsonName); unknown keys stay as they are for validation to flag."""
    if value is None or shape is None:
        return value
    t = shape.type_name
    if t == "structure" and isinstance(value, dict) and not shape.metadata.get("document"):
        by_wire = {}
        for name, m in shape.members.items():
            by_wire[m.serialization.get("jsonName") or ser_name(name, m)] = name
        out = {}
        for k, v in value.items():
            name = by_wire.get(k, k)
            out[name] = from_json(v, shape.members.get(name), path + [name], problems)
        return out
    if t == "list" and isinstance(value, list):
        return [from_json(v, shape.member, path + [i], problems) for i, v in enumerate(value)]
    if t == "map" and isinstance(value, dict):
        return {k: from_json(v, shape.value, path + [MapKey(k)], problems) for k, v in value.items()}
    return value


def decode_json_rpc(req: Request, service: str, op: str) -> Identified:
    m = model(service)
    if op not in m.operation_names:
        return Identified(service, None, why=f"{service} has no operation {op!r}")
    shape = m.operation_model(op).input_shape
    ident = Identified(service, op)
    text = req.body.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text) if text else {}
    except ValueError:
        ident.problems.append(("", "model.body", "request body is not JSON"))
        ident.params = {}
        return ident
    if not isinstance(body, dict):
        ident.problems.append(("", "model.body", "request body is not a JSON object"))
        body = {}
    ident.params = from_json(body, shape, [], ident.problems) if shape else body
    return ident


# --- query / ec2 protocol --------------------------------------------------------------------


def decode_query(req: Request, service: str, form: dict) -> Identified:
    m = model(service)
    if req.method == "GET" and not form:
        form = dict(req.query)
    op = form.get("Action")
    if not op or op not in m.operation_names:
        return Identified(service, None, why=f"query Action {op!r} is not an operation of {service}")
    ident = Identified(service, op)
    version = form.get("Version")
    if version != m.api_version:
        ident.problems.append(("Version", "model.version", f"Version {version!r}, the API's is {m.api_version}"))
    tree: dict = {}
    for k, v in form.items():
        if k in ("Action", "Version"):
            continue
        node = tree
        parts = k.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                nxt = node[part] = {"": nxt}
            node = nxt
        last = parts[-1]
        if isinstance(node.get(last), dict):
            node[last][""] = v
        else:
            node[last] = v
    shape = m.operation_model(op).input_shape
    ec2 = m.protocol == "ec2"
    ident.params = query_value(tree, shape, ec2) if shape else tree
    return ident


def _query_member_name(name: str, shape, ec2: bool) -> str:
    if ec2:
        if shape.serialization.get("queryName"):
            return shape.serialization["queryName"]
        n = shape.serialization.get("name", name)
        return n[0].upper() + n[1:]
    return ser_name(name, shape)


def query_value(node: Any, shape, ec2: bool) -> Any:
    t = shape.type_name
    if t == "structure":
        if not isinstance(node, dict):
            return node
        by_wire = {_query_member_name(n, s, ec2): n for n, s in shape.members.items()}
        out = {}
        for k, v in node.items():
            name = by_wire.get(k)
            out[name if name else k] = query_value(v, shape.members[name], ec2) if name else v
        return out
    if t == "list":
        if node == "":
            return []
        if not isinstance(node, dict):
            return node
        flattened = ec2 or shape.serialization.get("flattened")
        items = node if flattened else node.get(shape.member.serialization.get("name", "member"), node)
        if not isinstance(items, dict) or not all(k.isdigit() for k in items):
            return node
        return [query_value(items[k], shape.member, ec2) for k in sorted(items, key=int)]
    if t == "map":
        if not isinstance(node, dict):
            return node
        entries = node if shape.serialization.get("flattened") else node.get("entry", node)
        kname = shape.key.serialization.get("name", "key")
        vname = shape.value.serialization.get("name", "value")
        out = {}
        for _, e in sorted(entries.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
            if isinstance(e, dict) and kname in e:
                out[e[kname]] = query_value(e.get(vname), shape.value, ec2)
        return out
    if isinstance(node, dict):
        return node.get("", node)
    return from_text(node, shape)


# --- rest-json / rest-xml --------------------------------------------------------------------

_TEMPLATES: dict[str, list] = {}


def templates(service: str) -> list:
    """(operation, method, path regex, label names, query markers) for each operation."""
    if service not in _TEMPLATES:
        m = model(service)
        rows = []
        for op in m.operation_names:
            http = m.operation_model(op).http
            uri = http.get("requestUri", "/")
            path_t, _, q = uri.partition("?")
            rx = ""
            labels = []
            for lit, label in re.findall(r"([^{]*)(?:\{([^}]+)\})?", path_t):
                rx += re.escape(lit)
                if label:
                    greedy = label.endswith("+")
                    labels.append(label.rstrip("+"))
                    rx += f"(?P<g{len(labels) - 1}>{'.+' if greedy else '[^/]+'})"
            if path_t.endswith("}") and not path_t.endswith("+}"):
                rx += "/?"
            markers = urllib.parse.parse_qsl(q, keep_blank_values=True)
            rows.append((op, http.get("method", "POST"), re.compile(rx), labels, markers))
        _TEMPLATES[service] = rows
    return _TEMPLATES[service]


def _location_members(shape):
    for name, s in (shape.members.items() if shape else []):
        yield name, s, s.serialization.get("location"), s.serialization.get("name", name)


def decode_rest(req: Request, service: str) -> Identified:
    m = model(service)
    query_keys = {k for k, _ in req.query}
    hint = dict(req.query).get("x-id")  # the Rust SDK names S3 operations: ?x-id=GetObject
    best = None
    for op, method, rx, labels, markers in templates(service):
        if method != req.method:
            continue
        match = rx.fullmatch(req.path)
        if not match:
            continue
        if any(k not in query_keys or (v and dict(req.query).get(k) != v) for k, v in markers):
            continue
        shape = m.operation_model(op).input_shape
        required = set(shape.required_members) if shape else set()
        ok = True
        present = 0
        known_q = {k for k, _ in markers} | {"x-id"}
        for name, s, loc, wire in _location_members(shape):
            if loc == "querystring":
                known_q.add(wire)
                have = wire in query_keys
            elif loc == "header":
                have = wire.lower() in req.headers
            else:
                continue
            if have:
                present += 1
            elif name in required:
                ok = False
        if not ok:
            continue
        unknown_q = len([k for k in query_keys if k not in known_q and not k.lower().startswith("x-amz-")])
        score = (op == hint, len(markers), present - unknown_q, -len(labels))
        if best is None or score > best[0]:
            best = (score, op, match, labels)
    if best is None:
        return Identified(service, None, why="no operation's method and requestUri template match")
    _, op, match, labels = best
    ident = Identified(service, op)
    ident.params = rest_params(req, m, op, match, labels, ident.problems)
    return ident


def rest_params(req: Request, m, op: str, match, labels: list, problems: list) -> dict:
    shape = m.operation_model(op).input_shape
    params: dict = {}
    if shape is None:
        return params
    by_label = {}
    for i, label in enumerate(labels):
        by_label[label] = urllib.parse.unquote(match.group(f"g{i}"))
    query: dict[str, list[str]] = {}
    for k, v in req.query:
        query.setdefault(k, []).append(v)
    used_q = {"x-id"}
    markers = urllib.parse.parse_qsl(m.operation_model(op).http.get("requestUri", "").partition("?")[2], keep_blank_values=True)
    used_q |= {k for k, _ in markers}
    for name, s, loc, wire in _location_members(shape):
        if loc == "uri":
            if wire in by_label:
                params[name] = from_text(by_label[wire], s)
        elif loc == "querystring":
            if s.type_name == "map":
                rest = {k: v[-1] for k, v in query.items() if k not in used_q}
                if rest:
                    params[name] = rest
                    used_q |= set(rest)
            elif wire in query:
                used_q.add(wire)
                vals = query[wire]
                params[name] = [from_text(v, s.member) for v in vals] if s.type_name == "list" else from_text(vals[-1], s)
        elif loc == "header":
            v = req.headers.get(wire.lower())
            if v is not None:
                if s.type_name == "list":
                    params[name] = [from_text(x.strip(), s.member) for x in v.split(",")]
                else:
                    params[name] = from_text(v, s)
        elif loc == "headers":
            prefix = wire.lower()
            vals = {k[len(prefix) :]: v for k, v in req.headers.items() if k.startswith(prefix)}
            if vals:
                params[name] = vals
        elif loc == "statusCode":
            pass
    for k in query:
        if k not in used_q and not k.lower().startswith("x-amz-"):
            params[k] = query[k][-1]  # unknown query parameter: validation reports it
    payload = shape.serialization.get("payload")
    body = req.body
    if payload:
        ps = shape.members[payload]
        if req.omitted is not None:
            if ps.type_name == "blob":
                params[payload] = Streamed(req.omitted)
            else:
                problems.append((payload, "model.body", "the recording left this body out; record it to check it"))
        elif ps.type_name in ("blob", "string"):
            if body or payload in shape.required_members:
                params[payload] = Streamed(len(body)) if ps.type_name == "blob" else body.decode("utf-8", "replace")
        elif body.strip():
            params[payload] = parse_body(body, ps, m.protocol, problems, root=payload)
    elif req.omitted is not None:
        problems.append(("", "model.body", "the recording left this body out; record it to check it"))
    elif body.strip():
        body_members = {n: s for n, s, loc, _ in _location_members(shape) if not loc}
        parsed = parse_body(body, shape, m.protocol, problems, root=None)
        if isinstance(parsed, dict):
            for k, v in parsed.items():
                params[k] = v
            for k in parsed:
                if k in shape.members and k not in body_members:
                    problems.append((k, "model.location", f"{k} belongs in the {shape.members[k].serialization.get('location')}, not the body"))
    return params


def parse_body(body: bytes, shape, protocol: str, problems: list, root: str | None) -> Any:
    if protocol == "rest-json":
        try:
            value = json.loads(body.decode("utf-8"))
        except ValueError:
            problems.append((root or "", "model.body", "request body is not JSON"))
            return {}
        return from_json(value, shape, [root] if root else [], problems)
    try:
        elem = ET.fromstring(body)
    except ET.ParseError as e:
        problems.append((root or "", "model.body", f"request body is not XML ({e})"))
        return {}
    want = shape.serialization.get("name", shape.name)
    if _local(elem.tag) != want:
        problems.append((root or "", "model.body", f"XML root element <{_local(elem.tag)}>, the model's is <{want}>"))
    return xml_value(elem, shape)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def xml_value(elem, shape) -> Any:
    t = shape.type_name
    if t == "structure":
        out: dict = {}
        by_wire = {}
        for name, s in shape.members.items():
            if s.type_name == "list" and s.serialization.get("flattened"):
                by_wire[s.member.serialization.get("name", s.serialization.get("name", name))] = name
            else:
                by_wire[s.serialization.get("name", name)] = name
        for child in elem:
            tag = _local(child.tag)
            name = by_wire.get(tag)
            if name is None:
                out[tag] = child.text
                continue
            s = shape.members[name]
            if s.type_name == "list" and s.serialization.get("flattened"):
                out.setdefault(name, []).append(xml_value(child, s.member))
            else:
                out[name] = xml_value(child, s)
        return out
    if t == "list":
        return [xml_value(c, shape.member) for c in elem]
    if t == "map":
        kname = shape.key.serialization.get("name", "key")
        vname = shape.value.serialization.get("name", "value")
        out = {}
        for entry in elem:
            k = entry.find(kname)
            v = entry.find(vname)
            if k is not None:
                out[k.text or ""] = xml_value(v, shape.value) if v is not None else None
        return out
    return from_text(elem.text or "", shape)


# ---------------------------------------------------------------------------------------------
# Rules table: what real services enforce and moto does not
# ---------------------------------------------------------------------------------------------


@dataclass
class Rule:
    id: str
    ops: tuple[str, ...]  # "ecs:RegisterTaskDefinition"
    text: str
    source: str
    check: Callable[[dict, str], Iterator[tuple[list, str]]]  # (params, op) → (path, what was found)


RULES: list[Rule] = []


def rule(id: str, ops: str, text: str, source: str):
    """Adds a row: the decorated function gets the request's params (model member names) and
    its "service:Operation", and yields (path parts, what was found) for each breach."""

    def deco(fn):
        RULES.append(Rule(id, tuple(o.strip() for o in ops.split(",")), text, source, fn))
        return fn

    return deco


def items(value: Any) -> list:
    return value if isinstance(value, list) else []


def obj(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


ECS_TASKDEF_DOC = "ECS API reference: RegisterTaskDefinition / ContainerDefinition"

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
    "ecs:RegisterTaskDefinition",
    "a FARGATE task definition needs task-level cpu and memory, a supported pair "
    "(256: 512/1024/2048; 512: 1024-4096 step 1024; 1024: 2048-8192 step 1024; 2048: 4096-16384 step 1024; "
    "4096: 8192-30720 step 1024; 8192: 16384-61440 step 4096; 16384: 32768-122880 step 8192)",
    "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task_definition_parameters.html#task_size (Task size)",
)
def _fargate_task_size(p, op):
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


# ---------------------------------------------------------------------------------------------
# Checking a recording
# ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    checked: int = 0


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
    _report_params(ident, report, req.n)


def _report_params(ident: Identified, report: Report, n: int) -> None:
    op_model = model(ident.service).operation_model(ident.operation)
    found = list(ident.problems)
    if op_model.input_shape is not None:
        validate(ident.params, op_model.input_shape, [], found)
    rule_found = []
    for r in RULES:
        if ident.op in r.ops:
            for path, detail in r.check(ident.params or {}, ident.op):
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


class Placeholder(str):
    """A plan's `<...>` value, known only at run time (a new revision's ARN): its type is
    checked, its content is not."""


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
    report = check_plan(plan) if plan is not None else check(requests, args.strict)
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
