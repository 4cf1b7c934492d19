"""Decoding recorded requests: one JSON Lines record → service, operation and the input in
the model's member names, for every protocol botocore models (json, query/ec2, rest-json,
rest-xml). Part of the contract checker (check.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from shapes import KNOWN_SERVICES, MapKey, Streamed, available, from_text, model, signing_names, target_prefixes

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
    status: int | None = None  # the response's HTTP status, when the recorder wrote it


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
    if rec.get("status") is not None:
        req.status = int(rec["status"])
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
    m = re.fullmatch(r"/service/([^/]+)/operation/([^/]+)", req.path)
    if req.headers.get("smithy-protocol") == "rpc-v2-cbor" and m:
        # Smithy RPC v2 CBOR (newer SDKs for some services, CloudWatch): the operation is in
        # the path, the input a CBOR map keyed by member names.
        svc = signing_names().get(scope or "", scope)
        if svc and available(svc) and m.group(2) in model(svc).operation_names:
            return decode_cbor_rpc(req, svc, m.group(2))
        return Identified(None, None, why=f"rpc-v2-cbor request for {m.group(1)}/{m.group(2)}")
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


def decode_cbor_rpc(req: Request, service: str, op: str) -> Identified:
    try:
        # moto (in the same venv) carries a CBOR codec; nothing else here needs one.
        from moto.core.cbor import loads
    except ImportError:
        return Identified(service, op, None, why="rpc-v2-cbor body not decoded (no CBOR decoder: moto is not installed)")
    shape = model(service).operation_model(op).input_shape
    ident = Identified(service, op)
    try:
        body = loads(req.body) if req.body else {}
    except Exception:  # noqa: BLE001 - any decoder failure means the body is not CBOR
        ident.problems.append(("", "model.body", "request body is not CBOR"))
        ident.params = {}
        return ident
    if not isinstance(body, dict):
        ident.problems.append(("", "model.body", "request body is not a CBOR map"))
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


def virtual_host_bucket(req: Request) -> str | None:
    """The bucket of a virtual-hosted-style S3 request (`bucket.s3.us-east-1.amazonaws.com`,
    `bucket.localhost:5000`); None for path style (an IP or a plain service host)."""
    host = req.headers.get("host", "").rsplit(":", 1)[0] if not req.headers.get("host", "").startswith("[") else ""
    m = re.fullmatch(r"(.+?)\.(?:s3[.-].*|s3|localhost)", host)
    return m.group(1) if m and not re.fullmatch(r"[\d.]+", host) else None


def decode_rest(req: Request, service: str) -> Identified:
    m = model(service)
    if service == "s3":
        bucket = virtual_host_bucket(req)
        if bucket:
            req.path = "/" + urllib.parse.quote(bucket) + (req.path if req.path != "/" else "")
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
