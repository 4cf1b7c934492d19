"""Shared code for the stand-in MongoDB Database Tools used by backhaul's tests.

These are NOT the real mongodump/mongorestore. They read and write a directory
that plays the part of a MongoDB server (see README.md next to this file).
Python 3 standard library only.
"""
import datetime
import gzip
import json
import os
import re
import signal
import struct
import sys
import time
import urllib.parse

DATA_ENV = "BACKHAUL_STANDIN_MONGO_DATA"
PASSWORD_ENV = "BACKHAUL_STANDIN_MONGO_PASSWORD"
USER_ENV = "BACKHAUL_STANDIN_MONGO_USER"
ARGV_LOG_ENV = "BACKHAUL_STANDIN_ARGV_LOG"
SLEEP_ENV = "BACKHAUL_STANDIN_SLEEP"
FAIL_ENV = "BACKHAUL_STANDIN_FAIL"
FAIL_AFTER_ENV = "BACKHAUL_STANDIN_FAIL_AFTER_BYTES"
VERSION_ENV = "BACKHAUL_STANDIN_VERSION"
DEFAULT_VERSION = "100.9.4"

ARCHIVE_PRELUDE = "prelude.json"
ARCHIVE_FORMAT = "backhaul-standin-archive"
MAX_BSON_SIZE = 16 * 1024 * 1024 + 16 * 1024  # server limit plus slack, like the tools

# --------------------------------------------------------------------------- logging


class Log:
    quiet = False
    verbosity = 0


def timestamp():
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + "%03d+0000" % (now.microsecond // 1000)


def emit(msg):
    """One log line on stderr, in the tools' `<timestamp>\\t<message>` shape."""
    try:
        sys.stderr.write("%s\t%s\n" % (timestamp(), msg))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def log(msg, level=0):
    """Progress output: hidden by --quiet; level > 0 needs that many -v."""
    if not Log.quiet and level <= Log.verbosity:
        emit(msg)


def finish(code):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)  # no interpreter teardown: half-written streams stay half-written


def fail(msg):
    emit("Failed: " + msg)
    finish(1)


def install_signal_handlers():
    names = {signal.SIGINT: "interrupt", signal.SIGTERM: "terminated"}

    def handler(signum, _frame):
        emit("signal '%s' received; attempting to shut down" % names[signum])
        finish(1)

    for sig in names:
        signal.signal(sig, handler)


def sleep_hook():
    """BACKHAUL_STANDIN_SLEEP=<secs>: linger (in small steps, so signals land fast)."""
    secs = float(os.environ.get(SLEEP_ENV) or 0)
    end = time.monotonic() + secs
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def fail_after_bytes():
    raw = os.environ.get(FAIL_AFTER_ENV)
    return int(raw) if raw not in (None, "") else None


# --------------------------------------------------------------------------- options


class UsageError(Exception):
    pass


def parse_args(argv, spec, short):
    """Parse argv go-flags style.

    spec: long name -> "value" (--f v / --f=v), "multi" (repeatable value),
    "int", "flag" (boolean, no argument), "optional" (argument only via
    --f=value, like --archive), "verbose". short: letter -> long name.
    Returns (opts, positionals).
    """
    opts, pos = {}, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            pos.extend(argv[i:])
            break
        if arg.startswith("--"):
            name, eq, val = arg[2:].partition("=")
            has = bool(eq)
        elif arg.startswith("-") and len(arg) > 1:
            body = arg[1:]
            if re.fullmatch(r"v+", body):
                opts["verbose"] = opts.get("verbose", 0) + len(body)
                continue
            if body[0] not in short:
                raise UsageError('unknown option "%s"' % body[0])
            name = short[body[0]]
            rest = body[1:]
            has, val = (True, rest[1:]) if rest.startswith("=") else (bool(rest), rest)
        else:
            pos.append(arg)
            continue
        kind = spec.get(name)
        if kind is None:
            raise UsageError('unknown option "%s"' % name)
        if kind == "flag":
            if has:
                raise UsageError("bool flag `--%s' cannot have an argument" % name)
            opts[name] = True
        elif kind == "verbose":
            if has and not val.isdigit():
                raise UsageError("invalid argument for flag `--verbose': %r" % val)
            opts["verbose"] = opts.get("verbose", 0) + (int(val) if has else 1)
        elif kind == "optional":
            opts[name] = val if has else True
        else:
            if not has:
                if i >= len(argv) or (argv[i].startswith("-") and argv[i] != "-"):
                    raise UsageError("expected argument for flag `--%s'" % name)
                val = argv[i]
                i += 1
            if kind == "multi":
                opts.setdefault(name, []).append(val)
            elif kind == "int":
                if not re.fullmatch(r"-?\d+", val):
                    raise UsageError("invalid argument for flag `--%s' (expected int): "
                                     "strconv.ParseInt: parsing %s: invalid syntax"
                                     % (name, json.dumps(val)))
                opts[name] = int(val)
            else:
                opts[name] = val
    return opts, pos


COMMON_SPEC = {
    "help": "flag", "version": "flag", "config": "value", "uri": "value",
    "db": "value", "collection": "value", "gzip": "flag", "archive": "optional",
    "quiet": "flag", "verbose": "verbose", "numParallelCollections": "int",
    "host": "value", "port": "value", "username": "value", "password": "value",
    "authenticationDatabase": "value",
}
COMMON_SHORT = {"h": "host", "d": "db", "c": "collection", "j": "numParallelCollections",
                "u": "username", "p": "password"}

# --------------------------------------------------------------------------- --config


class ConfigError(Exception):
    pass


CONFIG_KEYS = ("uri", "password", "sslPEMKeyPassword")


def _yaml_scalar(raw, lineno):
    where = "line %d" % lineno
    if raw.startswith("'"):
        out, j = [], 1
        while True:
            k = raw.find("'", j)
            if k < 0:
                raise ConfigError("%s: found unexpected end of stream (unclosed ')" % where)
            out.append(raw[j:k])
            if raw[k + 1:k + 2] == "'":
                out.append("'")
                j = k + 2
                continue
            tail = raw[k + 1:]
            break
    elif raw.startswith('"'):
        m = re.match(r'"((?:[^"\\]|\\.)*)"', raw)
        if not m:
            raise ConfigError("%s: found unexpected end of stream (unclosed \")" % where)
        inner = re.sub(r"\\x([0-9A-Fa-f]{2})", r"\\u00\1", m.group(1))
        try:
            out = [json.loads('"%s"' % inner)]
        except ValueError:
            raise ConfigError("%s: found unknown escape character" % where)
        tail = raw[m.end():]
    else:
        value = re.split(r"\s#", raw, maxsplit=1)[0].strip()
        if value[:1] in tuple("&*!|>%@`{[],"):
            raise ConfigError("%s: plain scalar cannot start with %r (quote it)" % (where, value[0]))
        if ": " in value or value.endswith(":"):
            raise ConfigError("%s: mapping values are not allowed in this context" % where)
        return value
    tail = tail.strip()
    if tail and not tail.startswith("#"):
        raise ConfigError("%s: did not find expected key after quoted scalar" % where)
    return "".join(out)


def parse_config_text(text):
    """The small YAML subset the tools' --config needs: top-level `key: scalar`."""
    out = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#") or line.strip() == "---":
            continue
        if line[0].isspace():
            raise ConfigError("line %d: unexpected indentation" % lineno)
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)[ \t]*:(?:[ \t]+(.*))?[ \t]*", line)
        if not m:
            raise ConfigError("line %d: could not find expected ':'" % lineno)
        key, raw = m.group(1), (m.group(2) or "").strip()
        if key not in CONFIG_KEYS:
            raise ConfigError("line %d: unknown key %r (stand-in accepts %s)"
                              % (lineno, key, ", ".join(CONFIG_KEYS)))
        if key in out:
            raise ConfigError("line %d: key %r already set" % (lineno, key))
        out[key] = _yaml_scalar(raw, lineno)
    return out


def stat_config(path):
    """(exists, mode string like '0600' or None, owned by us) for the argv log."""
    try:
        st = os.stat(path)
    except OSError:
        return False, None, None
    return True, "%04o" % (st.st_mode & 0o7777), st.st_uid == os.getuid()


def load_config(path):
    exists, mode, ours = stat_config(path)
    if not exists:
        raise UsageError("error opening file with --config: open %s: no such file or directory" % path)
    # NOT real-tool behaviour: mongodump/mongorestore read any readable config.
    # The stand-in refuses anything but a private file so tests prove backhaul
    # writes its secret-bearing config with mode 0600.
    if mode != "0600" or not ours:
        fail("stand-in refuses --config %s: mode %s%s; it must be a 0600 file owned by the caller"
             % (path, mode, "" if ours else " (not owned by caller)"))
    try:
        with open(path, encoding="utf-8") as f:
            return parse_config_text(f.read())
    except ConfigError as e:
        raise UsageError("error parsing config file %s: yaml: %s" % (path, e))
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError("error opening file with --config: %s" % e)


# --------------------------------------------------------------------------- URI


class UriError(Exception):
    pass


def _pct(s, what):
    if re.search(r"%(?![0-9A-Fa-f]{2})", s):
        raise UriError("invalid %s: invalid percent encoding" % what)
    try:
        return urllib.parse.unquote(s, errors="strict")
    except UnicodeDecodeError:
        raise UriError("invalid %s: not valid UTF-8" % what)


def parse_uri(uri):
    m = re.match(r"(mongodb|mongodb\+srv)://", uri)
    if not m:
        raise UriError('scheme must be "mongodb" or "mongodb+srv"')
    scheme, rest = m.group(1), uri[m.end():]
    cut = [k for k in (rest.find("/"), rest.find("?")) if k >= 0]
    end = min(cut) if cut else len(rest)
    authority, tail = rest[:end], rest[end:]
    user = password = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        if "@" in userinfo:
            raise UriError("unescaped @ sign in user info")
        user, colon, pw = userinfo.partition(":")
        if colon:
            if ":" in pw:
                raise UriError("unescaped colon in password")
            password = _pct(pw, "password")
        user = _pct(user, "username")
        if not user:
            raise UriError("username required if URI contains user info")
    hosts = authority.split(",") if authority else []
    if not hosts or any(not h for h in hosts):
        raise UriError("must have at least 1 host")
    for h in hosts:
        port = h.rpartition("]")[2][1:] if h.startswith("[") else h.rpartition(":")[2] if ":" in h else ""
        if port and (not port.isdigit() or not 0 < int(port) < 65536):
            raise UriError("port must be an integer: %s" % port)
    if scheme == "mongodb+srv" and (len(hosts) != 1 or ":" in hosts[0]):
        raise UriError("URI with SRV must include one and only one hostname, and no port")
    db = None
    if tail.startswith("/"):
        path, _, _query = tail[1:].partition("?")
        db = _pct(path, "database") or None
    return {"scheme": scheme, "user": user, "password": password, "hosts": hosts, "db": db}


def redact_uri(uri):
    return re.sub(r"^(mongodb(?:\+srv)?://[^:@/]*:)[^@/]*@", r"\1xxxxx@", uri)


# --------------------------------------------------------------------------- BSON


class ObjectId(bytes):
    def __new__(cls, raw):
        raw = bytes.fromhex(raw) if isinstance(raw, str) else bytes(raw)
        if len(raw) != 12:
            raise ValueError("ObjectId needs 12 bytes")
        return super().__new__(cls, raw)

    def __repr__(self):
        return "ObjectId('%s')" % self.hex()


class Int64(int):
    """Force BSON int64 (0x12) for small values."""


class Binary:
    def __init__(self, data, subtype=0):
        self.data, self.subtype = bytes(data), subtype

    def __eq__(self, other):
        return isinstance(other, Binary) and (self.data, self.subtype) == (other.data, other.subtype)


class BsonError(Exception):
    pass


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
MS = datetime.timedelta(milliseconds=1)


def _cstring(s):
    b = s.encode("utf-8")
    if b"\x00" in b:
        raise ValueError("BSON key contains NUL")
    return b + b"\x00"


def _element(key, v):
    k = _cstring(key)
    if isinstance(v, bool):
        return b"\x08" + k + (b"\x01" if v else b"\x00")
    if isinstance(v, Int64):
        return b"\x12" + k + struct.pack("<q", v)
    if isinstance(v, int):
        if -2 ** 31 <= v < 2 ** 31:
            return b"\x10" + k + struct.pack("<i", v)
        return b"\x12" + k + struct.pack("<q", v)
    if isinstance(v, float):
        return b"\x01" + k + struct.pack("<d", v)
    if isinstance(v, str):
        b = v.encode("utf-8")
        return b"\x02" + k + struct.pack("<i", len(b) + 1) + b + b"\x00"
    if isinstance(v, dict):
        return b"\x03" + k + encode(v)
    if isinstance(v, (list, tuple)):
        return b"\x04" + k + encode({str(i): x for i, x in enumerate(v)})
    if isinstance(v, ObjectId):
        return b"\x07" + k + bytes(v)
    if isinstance(v, Binary):
        return b"\x05" + k + struct.pack("<i", len(v.data)) + bytes([v.subtype]) + v.data
    if isinstance(v, (bytes, bytearray)):
        return _element(key, Binary(v))
    if isinstance(v, datetime.datetime):
        return b"\x09" + k + struct.pack("<q", (v - EPOCH) // MS)
    if v is None:
        return b"\x0a" + k
    raise TypeError("cannot BSON-encode %r" % type(v))


def encode(doc):
    body = b"".join(_element(k, v) for k, v in doc.items())
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def _i32(buf, pos):
    if pos + 4 > len(buf):
        raise BsonError("truncated int32")
    return struct.unpack_from("<i", buf, pos)[0]


def _cstr_end(buf, pos):
    end = buf.find(b"\x00", pos)
    if end < 0:
        raise BsonError("unterminated cstring")
    return end


FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8,
         0x12: 8, 0x13: 16, 0xFF: 0, 0x7F: 0}


def _value_end(buf, t, pos):
    if t in FIXED:
        return pos + FIXED[t]
    if t in (0x02, 0x0D, 0x0E):
        return pos + 4 + _i32(buf, pos)
    if t in (0x03, 0x04, 0x0F):
        return pos + _i32(buf, pos)
    if t == 0x05:
        return pos + 5 + _i32(buf, pos)
    if t == 0x0B:
        return _cstr_end(buf, _cstr_end(buf, pos) + 1) + 1
    if t == 0x0C:
        return pos + 4 + _i32(buf, pos) + 12
    raise BsonError("unknown element type 0x%02x" % t)


def elements(doc):
    """Yield (type, key, value_start, value_end) for a raw document."""
    n = _i32(doc, 0)
    if n != len(doc) or doc[-1:] != b"\x00":
        raise BsonError("bad document length")
    pos = 4
    while pos < n - 1:
        t = doc[pos]
        kend = _cstr_end(doc, pos + 1)
        key = doc[pos + 1:kend].decode("utf-8", "replace")
        vend = _value_end(doc, t, kend + 1)
        if vend > n - 1:
            raise BsonError("element overruns document")
        yield t, key, kend + 1, vend
        pos = vend
    if pos != n - 1:
        raise BsonError("document not terminated")


def decode(doc):
    """Raw document -> dict (the types the fixtures use; others stay raw bytes)."""
    out = {}
    for t, key, s, e in elements(doc):
        v = doc[s:e]
        if t == 0x01:
            out[key] = struct.unpack("<d", v)[0]
        elif t == 0x02:
            out[key] = v[4:-1].decode("utf-8")
        elif t == 0x03:
            out[key] = decode(v)
        elif t == 0x04:
            out[key] = list(decode(v).values())
        elif t == 0x05:
            out[key] = Binary(v[5:], v[4])
        elif t == 0x07:
            out[key] = ObjectId(v)
        elif t == 0x08:
            out[key] = v != b"\x00"
        elif t == 0x09:
            out[key] = EPOCH + struct.unpack("<q", v)[0] * MS
        elif t == 0x0A:
            out[key] = None
        elif t == 0x10:
            out[key] = struct.unpack("<i", v)[0]
        elif t == 0x12:
            out[key] = Int64(struct.unpack("<q", v)[0])
        else:
            out[key] = (t, v)
    return out


def split_docs(data):
    """Split a .bson file into raw documents, validating the framing."""
    docs, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 5:
            raise BsonError("%d trailing bytes at offset %d" % (len(data) - pos, pos))
        n = _i32(data, pos)
        if n < 5 or n > MAX_BSON_SIZE or pos + n > len(data) or data[pos + n - 1] != 0:
            raise BsonError("invalid BSON length %d at offset %d" % (n, pos))
        docs.append(data[pos:pos + n])
        pos += n
    return docs


def id_key(doc):
    """The raw (type + value) bytes of a document's _id, or None."""
    for t, key, s, e in elements(doc):
        if key == "_id":
            return bytes([t]) + doc[s:e]
    return None


def render_id(key):
    t, v = key[0], key[1:]
    if t == 0x07:
        return "ObjectId('%s')" % v.hex()
    if t == 0x02:
        return json.dumps(v[4:-1].decode("utf-8", "replace"), ensure_ascii=False)
    if t in (0x10, 0x12):
        return str(struct.unpack("<i" if t == 0x10 else "<q", v)[0])
    return "<%d bytes of type 0x%02x>" % (len(v), t)


# --------------------------------------------------------------------------- "server" data


def data_root():
    root = os.environ.get(DATA_ENV)
    if not root:
        fail("%s is not set: the stand-in tools need a stand-in server data directory" % DATA_ENV)
    if not os.path.isdir(root):
        fail("can't create session: stand-in server data directory %s does not exist" % root)
    return root


def list_dbs(root):
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def list_collections(dbdir):
    names = set()
    for f in os.listdir(dbdir):
        for suffix in (".metadata.json", ".bson"):
            if f.endswith(suffix):
                names.add(f[:-len(suffix)])
                break
    return sorted(names)


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_atomic(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp-%d" % os.getpid()
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def metadata_json(obj):
    """Serialise metadata the way the fixtures (and the stand-in server) store it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def gz(data):
    return gzip.compress(data, mtime=0)


# --------------------------------------------------------------------------- shared start-up


def log_invocation(tool, argv, opts):
    path = os.environ.get(ARGV_LOG_ENV)
    if not path:
        return
    cfg = opts.get("config") if opts else None
    rec = {"tool": tool, "argv": argv, "pid": os.getpid(), "cwd": os.getcwd(),
           "config": cfg, "config_existed": None, "config_mode": None,
           "config_owned": None, "config_keys": None, "config_uri_redacted": None,
           "stdin_isatty": os.isatty(0)}
    if cfg:
        rec["config_existed"], rec["config_mode"], rec["config_owned"] = stat_config(cfg)
        try:
            with open(cfg, encoding="utf-8") as f:
                parsed = parse_config_text(f.read())
            rec["config_keys"] = sorted(parsed)
            if "uri" in parsed:
                rec["config_uri_redacted"] = redact_uri(parsed["uri"])
        except (OSError, ConfigError, UnicodeDecodeError) as e:
            rec["config_error"] = str(e)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    finally:
        os.close(fd)


def start(tool, argv, spec, short, usage):
    """Parse options, run the hooks, check connection + auth. Returns (opts, pos, ctx)."""
    install_signal_handlers()
    try:
        opts, pos = parse_args(argv, spec, short)
    except UsageError as e:
        log_invocation(tool, argv, None)
        emit("error parsing command line options: %s" % e)
        emit("try '%s --help' for more information" % tool)
        finish(1)
    log_invocation(tool, argv, opts)
    Log.quiet = bool(opts.get("quiet"))
    Log.verbosity = opts.get("verbose", 0)
    if opts.get("help"):
        sys.stdout.write(usage)
        finish(0)
    if opts.get("version"):
        sys.stdout.write("%s version: %s\ngit version: 0000000000000000000000000000000000000000 "
                         "(backhaul stand-in)\nGo version: go1.21.8\n   os: linux\n   arch: amd64\n"
                         "   compiler: gc\n" % (tool, os.environ.get(VERSION_ENV) or DEFAULT_VERSION))
        finish(0)
    if os.environ.get(FAIL_ENV):
        emit(os.environ[FAIL_ENV])
        finish(1)
    for legacy in ("host", "port", "username", "password"):
        if legacy in opts:
            # Real tools accept these; backhaul is meant to pass everything via --config.
            fail("stand-in does not support --%s; pass the connection string via --config" % legacy)
    config = {}
    if opts.get("config"):
        try:
            config = load_config(opts["config"])
        except UsageError as e:
            emit("error parsing command line options: %s" % e)
            emit("try '%s --help' for more information" % tool)
            finish(1)
    uris = [p for p in pos if p.startswith("mongodb://") or p.startswith("mongodb+srv://")]
    pos = [p for p in pos if p not in uris]
    uri = opts.get("uri") or (uris[0] if uris else None) or config.get("uri") or "mongodb://localhost/"
    root = data_root()
    try:
        u = parse_uri(uri)
    except UriError as e:
        fail("error parsing uri: %s" % e)
    want_pw, want_user = os.environ.get(PASSWORD_ENV), os.environ.get(USER_ENV)
    password = config.get("password", u["password"])
    if (want_pw is not None or want_user is not None) and u["user"] is None:
        fail("error getting database names: (Unauthorized) command listDatabases requires authentication")
    if (want_pw is not None and password != want_pw) or (want_user is not None and u["user"] != want_user):
        fail("can't create session: failed to connect to %s: connection() error occurred during "
             "connection handshake: auth error: sasl conversation error: unable to authenticate "
             "using mechanism \"SCRAM-SHA-256\": (AuthenticationFailed) Authentication failed." % uri)
    return opts, pos, {"root": root, "uri": u}
