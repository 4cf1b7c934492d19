"""botocore's service models, and validation of a decoded input against an operation's shape.

Part of the contract checker (check.py): which services exist and how they are spelled on the
wire comes from the models, never from hard-coded lists of prefixes or versions.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.utils
import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

import botocore
import botocore.session

# ---------------------------------------------------------------------------------------------
# Services and models
# ---------------------------------------------------------------------------------------------

# Services backhaul (or its tests) talk to. x-amz-target prefixes and query-protocol versions are
# read from these models, not hard-coded. A request for another service is still identified when
# its SigV4 credential scope names a service botocore has a model for.
KNOWN_SERVICES = (
    "ecs",
    "cloudwatch",
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


@functools.cache
def target_prefixes() -> dict[str, str]:
    """x-amz-target prefix → service name, from the known services' metadata."""
    out = {}
    for svc in KNOWN_SERVICES:
        prefix = model(svc).metadata.get("targetPrefix")
        if prefix:
            out[prefix] = svc
    return out


@functools.cache
def signing_names() -> dict[str, str]:
    """SigV4 credential-scope service → service name."""
    out = {}
    for svc in KNOWN_SERVICES:
        md = model(svc).metadata
        out.setdefault(md.get("signingName") or md.get("endpointPrefix") or svc, svc)
    return out


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


class Placeholder(str):
    """A plan's `<...>` value, known only at run time (a new revision's ARN): its type is
    checked, its content is not."""


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
