#!/usr/bin/env python3
"""A MongoDB wire-protocol test server for backhaul's tests.

Real mongodump/mongorestore talk to it over TCP: OP_MSG (and legacy OP_QUERY for the first
handshake), SCRAM-SHA-1/SCRAM-SHA-256 logins, and the commands the tools use. It holds real
BSON documents (kept as the exact bytes the client sent, so types survive a round trip) and
index specifications, per database and collection, in memory.

    server.py [--port N] [--user U --password P ... [--auth-db admin]] [--seed FILE.json]
              [--state-file FILE.json]

With --user (repeatable, one --password each) logins are required, and the server holds what
a real mongod with auth does: each user in admin.system.users (`_id` "<db>.<user>", SCRAM
credentials, the root role) and {_id: "authSchema", currentVersion: 5} in admin.system.version.
Logins are checked against admin.system.users, so users mongorestore brings back (into a
temporary collection, then `_mergeAuthzCollections`, as it does with a real server) can log in.

Prints `PORT <n>` on stdout once it accepts connections. With --state-file, the whole state
is written there (canonical extended JSON, atomically) at start and after every write, as
{db: {collection: {"options": {...}, "indexes": [...], "documents": [...]}}}. The seed file
has the same shape; indexes get `v: 2` and the `_id_` index is implicit.
Unknown commands answer CommandNotFound (code 59) and are logged on stderr.
"""

import argparse
import base64
import hashlib
import hmac
import itertools
import json
import os
import socket
import struct
import sys
import threading
import uuid

import bson
from bson import json_util
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
MAX_BSON = 16 * 1024 * 1024
MAX_MSG = 48_000_000
BATCH_BYTES = 4 * 1024 * 1024
MAX_CONNECTIONS = 64
DECODE = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_MS)
RAW = CodecOptions(document_class=RawBSONDocument)
JSON = json_util.JSONOptions(
    json_mode=json_util.JSONMode.CANONICAL, datetime_conversion=DatetimeConversion.DATETIME_MS
)
NO_AUTH_NEEDED = {
    "hello", "ismaster", "isMaster", "saslStart", "saslContinue", "ping", "buildInfo",
    "buildinfo", "endSessions", "getnonce",
}


def log(*a):
    print("mongod-test:", *a, file=sys.stderr, flush=True)


class CommandError(Exception):
    def __init__(self, code, name, msg):
        super().__init__(msg)
        self.code, self.name, self.msg = code, name, msg


class Collection:
    def __init__(self, options=None):
        self.options = dict(options or {})
        self.uuid = uuid.uuid4()
        self.docs = {}  # id key -> raw bytes, in insertion order
        self.indexes = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]


def id_key(doc):
    return bson.encode({"": doc["_id"]})


class State:
    def __init__(self, state_file):
        self.lock = threading.RLock()
        self.dbs = {}
        self.state_file = state_file
        self.cursors = {}
        self.cursor_ids = itertools.count(1000)

    def coll(self, db, name, create=False):
        colls = self.dbs.get(db)
        if colls is None or name not in colls:
            if not create:
                return None
            self.dbs.setdefault(db, {})[name] = Collection()
        return self.dbs[db][name]

    def user(self, user_id):
        """The admin.system.users document `<db>.<user>`, decoded, or None."""
        with self.lock:
            c = self.coll("admin", "system.users")
            raw = c.docs.get(id_key({"_id": user_id})) if c else None
        return bson.decode(raw, DECODE) if raw else None

    def put(self, db, name, doc, replace=False):
        c = self.coll(db, name, create=True)
        key = id_key(doc)
        if replace or key not in c.docs:
            c.docs[key] = doc.raw if isinstance(doc, RawBSONDocument) else bson.encode(doc)

    def enable_auth(self, users, auth_db):
        """What a mongod with these users holds (kept when the seed already has them)."""
        with self.lock:
            for user, password in users:
                if self.user(f"{auth_db}.{user}") is None:
                    self.put("admin", "system.users", user_document(auth_db, user, password))
            self.put("admin", "system.version", {"_id": "authSchema", "currentVersion": 5})

    def load(self, path):
        with open(path) as f:
            seed = json_util.loads(f.read(), json_options=JSON)
        for db, colls in seed.items():
            for name, spec in colls.items():
                c = self.coll(db, name, create=True)
                c.options = dict(spec.get("options", {}))
                for d in spec.get("documents", []):
                    if "_id" not in d:
                        d = {"_id": bson.ObjectId(), **d}
                    c.docs[id_key(d)] = bson.encode(d)
                for ix in spec.get("indexes", []):
                    if ix.get("name") != "_id_":
                        c.indexes.append({"v": 2, **ix})

    def dump(self):
        out = {}
        for db in sorted(self.dbs):
            out[db] = {}
            for name in sorted(self.dbs[db]):
                c = self.dbs[db][name]
                out[db][name] = {
                    "options": c.options,
                    "indexes": c.indexes,
                    "documents": [bson.decode(raw, DECODE) for raw in c.docs.values()],
                }
        return out

    def save(self):
        if not self.state_file:
            return
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(json_util.dumps(self.dump(), json_options=JSON))
        os.replace(tmp, self.state_file)


HASHES = {"SCRAM-SHA-1": hashlib.sha1, "SCRAM-SHA-256": hashlib.sha256}


def scram_credentials(mechanism, user, password):
    """What mongod stores for a user: salt, iteration count, StoredKey and ServerKey."""
    h = HASHES[mechanism]
    if mechanism == "SCRAM-SHA-1":
        password = hashlib.md5(f"{user}:mongo:{password}".encode()).hexdigest()
    salt = os.urandom(16)
    iterations = 15000 if mechanism == "SCRAM-SHA-256" else 10000
    salted = hashlib.pbkdf2_hmac(h().name, password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", h).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return {"iterationCount": iterations, "salt": b64(salt),
            "storedKey": b64(h(client_key).digest()),
            "serverKey": b64(hmac.new(salted, b"Server Key", h).digest())}


def user_document(db, user, password):
    """An admin.system.users document as mongod writes it for createUser."""
    return {"_id": f"{db}.{user}", "userId": bson.Binary.from_uuid(uuid.uuid4()),
            "user": user, "db": db,
            "credentials": {m: scram_credentials(m, user, password) for m in HASHES},
            "roles": [{"role": "root", "db": "admin"}]}


class Scram:
    """Server side of one SCRAM conversation (RFC 5802 / 7677, MongoDB's SHA-1 variant),
    checked against the user's stored credentials (`find_user(name)` → document or None)."""

    def __init__(self, mechanism, find_user, payload):
        self.hash = HASHES.get(mechanism)
        if self.hash is None:
            raise CommandError(2, "BadValue", f"Unsupported mechanism {mechanism}")
        msg = payload.decode()
        if not msg.startswith("n,,"):
            raise CommandError(18, "AuthenticationFailed", "Authentication failed.")
        self.client_first_bare = msg[3:]
        attrs = dict(p.split("=", 1) for p in self.client_first_bare.split(","))
        name = attrs.get("n", "").replace("=2C", ",").replace("=3D", "=")
        doc = find_user(name) or {}
        cred = (doc.get("credentials") or {}).get(mechanism)
        self.ok_user = cred is not None
        if cred is None:  # answer as for a real user, fail at the proof
            cred = scram_credentials(mechanism, name, os.urandom(8).hex())
        self.stored = base64.b64decode(cred["storedKey"])
        self.server_key = base64.b64decode(cred["serverKey"])
        self.nonce = attrs.get("r", "") + base64.b64encode(os.urandom(18)).decode()
        self.server_first = f"r={self.nonce},s={cred['salt']},i={int(cred['iterationCount'])}"

    def hmac(self, key, msg):
        return hmac.new(key, msg, self.hash).digest()

    def finish(self, payload):
        final = payload.decode()
        without_proof, _, proof = final.rpartition(",p=")
        attrs = dict(p.split("=", 1) for p in without_proof.split(","))
        auth_msg = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = self.hmac(self.stored, auth_msg)
        try:
            given = base64.b64decode(proof)
        except Exception:
            given = b""
        recovered = bytes(a ^ b for a, b in zip(given, signature))
        if not self.ok_user or attrs.get("r") != self.nonce or len(given) != len(signature) \
                or self.hash(recovered).digest() != self.stored:
            raise CommandError(18, "AuthenticationFailed", "Authentication failed.")
        return f"v={base64.b64encode(self.hmac(self.server_key, auth_msg)).decode()}".encode()


def matches(doc, flt):
    """Equality, $in, $regex-free filters: what the tools send (mostly `{}`)."""
    for k, want in flt.items():
        have = doc.get(k)
        if isinstance(want, dict) and any(key.startswith("$") for key in want):
            for op, arg in want.items():
                if op == "$in" and have not in arg:
                    return False
                if op == "$eq" and have != arg:
                    return False
                if op == "$exists" and (k in doc) != bool(arg):
                    return False
        elif have != want:
            return False
    return True


class Connection:
    def __init__(self, server, sock, conn_id):
        self.server, self.sock, self.id = server, sock, conn_id
        self.authed = not server.users
        self.scram = {}
        self.conv_ids = itertools.count(1)

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def serve(self):
        try:
            while True:
                header = self.recv_exact(16)
                length, req_id, _, op = struct.unpack("<iiii", header)
                if length < 16 or length > MAX_MSG:
                    return
                body = self.recv_exact(length - 16)
                if op == OP_MSG:
                    self.on_msg(req_id, body)
                elif op == OP_QUERY:
                    self.on_query(req_id, body)
                else:
                    log(f"unsupported opcode {op}; closing")
                    return
        except (EOFError, ConnectionError, OSError):
            pass
        finally:
            self.sock.close()

    def send(self, req_id, op, payload):
        header = struct.pack("<iiii", 16 + len(payload), next(self.server.req_ids), req_id, op)
        self.sock.sendall(header + payload)

    def on_query(self, req_id, body):
        _flags = struct.unpack_from("<i", body)[0]
        end = body.index(b"\0", 4)
        ns = body[4:end].decode()
        pos = end + 1 + 8
        size = struct.unpack_from("<i", body, pos)[0]
        cmd = bson.decode(body[pos:pos + size], DECODE)
        if "$query" in cmd:
            cmd = cmd["$query"]
        reply = self.dispatch(ns.split(".", 1)[0], cmd)
        doc = bson.encode(reply)
        self.send(req_id, OP_REPLY, struct.pack("<iqii", 8, 0, 0, 1) + doc)

    def on_msg(self, req_id, body):
        flags = struct.unpack_from("<I", body)[0]
        end = len(body) - (4 if flags & 1 else 0)
        pos, cmd, sequences = 4, None, {}
        while pos < end:
            kind = body[pos]
            pos += 1
            size = struct.unpack_from("<i", body, pos)[0]
            if kind == 0:
                cmd = bson.decode(body[pos:pos + size], DECODE)
                pos += size
            else:
                sec_end = pos + size
                name_end = body.index(b"\0", pos + 4)
                ident = body[pos + 4:name_end].decode()
                docs, p = [], name_end + 1
                while p < sec_end:
                    dsize = struct.unpack_from("<i", body, p)[0]
                    docs.append(body[p:p + dsize])
                    p += dsize
                sequences[ident] = docs
                pos = sec_end
        for ident, raws in sequences.items():
            cmd[ident] = [RawBSONDocument(r) for r in raws]
        reply = self.dispatch(cmd.get("$db", "admin"), cmd)
        if flags & 2:  # moreToCome: the client wants no answer
            return
        self.send(req_id, OP_MSG, struct.pack("<I", 0) + b"\0" + bson.encode(reply))

    def dispatch(self, db, cmd):
        name = next(iter(cmd))
        handler = getattr(self, "cmd_" + name.lower(), None)
        try:
            if handler is None:
                if name != "atlasVersion":
                    log(f"unknown command {name!r} on {db}: {sorted(cmd)}")
                raise CommandError(59, "CommandNotFound", f"no such command: '{name}'")
            if not self.authed and name not in NO_AUTH_NEEDED:
                raise CommandError(13, "Unauthorized", f"command {name} requires authentication")
            return handler(db, cmd)
        except CommandError as e:
            return {"ok": 0.0, "errmsg": e.msg, "code": e.code, "codeName": e.name}

    # --- handshake and server info -----------------------------------------------------

    def cmd_hello(self, db, cmd):
        reply = {
            "isWritablePrimary": True, "ismaster": True, "helloOk": True,
            "topologyVersion": {"processId": self.server.process_id, "counter": Int64(0)},
            "maxBsonObjectSize": MAX_BSON, "maxMessageSizeBytes": MAX_MSG,
            "maxWriteBatchSize": 100000, "localTime": bson.datetime_ms.DatetimeMS(0),
            "logicalSessionTimeoutMinutes": 30, "connectionId": self.id,
            "minWireVersion": 0, "maxWireVersion": 17, "readOnly": False, "ok": 1.0,
        }
        mechs = cmd.get("saslSupportedMechs")
        doc = self.server.state.user(mechs) if isinstance(mechs, str) else None
        if doc and self.server.users:
            reply["saslSupportedMechs"] = sorted(doc.get("credentials", {}))
        return reply

    cmd_ismaster = cmd_hello

    def cmd_buildinfo(self, db, cmd):
        return {"version": "6.0.12", "versionArray": [6, 0, 12, 0], "gitVersion": "test",
                "modules": [], "bits": 64, "maxBsonObjectSize": MAX_BSON, "ok": 1.0}

    def cmd_ping(self, db, cmd):
        return {"ok": 1.0}

    def cmd_endsessions(self, db, cmd):
        return {"ok": 1.0}

    def cmd_getparameter(self, db, cmd):
        reply = {"featureCompatibilityVersion": {"version": "6.0"}, "ok": 1.0}
        if "authSchemaVersion" in cmd:
            reply["authSchemaVersion"] = 5
        return reply

    def cmd_getcmdlineopts(self, db, cmd):
        return {"argv": ["mongod"], "parsed": {}, "ok": 1.0}

    def cmd_serverstatus(self, db, cmd):
        return {"host": "localhost", "version": "6.0.12", "process": "mongod", "ok": 1.0}

    # --- authentication ----------------------------------------------------------------

    def cmd_saslstart(self, db, cmd):
        if not self.server.users:
            raise CommandError(18, "AuthenticationFailed", "Authentication failed.")
        scram = Scram(cmd.get("mechanism"), lambda name: self.server.state.user(f"{db}.{name}"),
                      bytes(cmd["payload"]))
        conv = next(self.conv_ids)
        self.scram[conv] = scram
        return {"conversationId": conv, "done": False,
                "payload": scram.server_first.encode(), "ok": 1.0}

    def cmd_saslcontinue(self, db, cmd):
        scram = self.scram.get(cmd.get("conversationId"))
        if scram is None:
            raise CommandError(17, "ProtocolError", "No SASL session state found")
        payload = bytes(cmd.get("payload", b""))
        if getattr(scram, "finished", False):
            return {"conversationId": cmd["conversationId"], "done": True, "payload": b"",
                    "ok": 1.0}
        final = scram.finish(payload)
        scram.finished = True
        self.authed = True
        return {"conversationId": cmd["conversationId"], "done": True, "payload": final,
                "ok": 1.0}

    # --- reads ---------------------------------------------------------------------------

    def cmd_listdatabases(self, db, cmd):
        st = self.server.state
        with st.lock:
            names = sorted(n for n, c in st.dbs.items() if c)
            flt = cmd.get("filter") or {}
            dbs = [{"name": n, "sizeOnDisk": 4096.0, "empty": False} for n in names
                   if matches({"name": n}, flt)]
        if cmd.get("nameOnly"):
            dbs = [{"name": d["name"]} for d in dbs]
        return {"databases": dbs, "totalSize": 4096.0 * len(dbs), "ok": 1.0}

    def cursor_reply(self, ns, docs, batch_size, first=True):
        """Answers with one batch; the rest stays on a cursor for getMore."""
        batch, size, rest = [], 0, docs
        limit = batch_size if batch_size else (101 if first else None)
        while rest and (limit is None or len(batch) < limit):
            raw = rest[0]
            nbytes = len(raw.raw) if isinstance(raw, RawBSONDocument) else len(bson.encode(raw))
            if batch and size + nbytes > BATCH_BYTES:
                break
            batch.append(raw)
            size += nbytes
            rest = rest[1:]
        cursor_id = 0
        if rest:
            st = self.server.state
            with st.lock:
                cursor_id = next(st.cursor_ids)
                st.cursors[cursor_id] = (ns, rest)
        key = "firstBatch" if first else "nextBatch"
        return {"cursor": {key: batch, "id": Int64(cursor_id), "ns": ns}, "ok": 1.0}

    def cmd_listcollections(self, db, cmd):
        st = self.server.state
        flt = cmd.get("filter") or {}
        out = []
        with st.lock:
            for name, c in sorted(st.dbs.get(db, {}).items()):
                info = {"name": name, "type": "collection", "options": c.options,
                        "info": {"readOnly": False,
                                 "uuid": bson.Binary.from_uuid(c.uuid)},
                        "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
                if not matches(info, flt):
                    continue
                out.append({"name": name, "type": "collection"} if cmd.get("nameOnly") else info)
        batch = (cmd.get("cursor") or {}).get("batchSize")
        return self.cursor_reply(f"{db}.$cmd.listCollections", out, batch)

    def cmd_listindexes(self, db, cmd):
        st = self.server.state
        with st.lock:
            c = st.coll(db, cmd["listIndexes"])
            if c is None:
                raise CommandError(26, "NamespaceNotFound", f"ns does not exist: {db}.{cmd['listIndexes']}")
            indexes = [dict(ix) for ix in c.indexes]
        batch = (cmd.get("cursor") or {}).get("batchSize")
        return self.cursor_reply(f"{db}.{cmd['listIndexes']}", indexes, batch)

    def cmd_find(self, db, cmd):
        st = self.server.state
        name = cmd["find"]
        flt = cmd.get("filter") or {}
        with st.lock:
            c = st.coll(db, name)
            raws = list(c.docs.values()) if c else []
        docs = [RawBSONDocument(r) for r in raws]
        if flt:
            docs = [d for d in docs if matches(bson.decode(d.raw, DECODE), flt)]
        skip = int(cmd.get("skip", 0) or 0)
        limit = int(cmd.get("limit", 0) or 0)
        docs = docs[skip:]
        if limit:
            docs = docs[:limit]
        return self.cursor_reply(f"{db}.{name}", docs, cmd.get("batchSize"))

    def cmd_getmore(self, db, cmd):
        st = self.server.state
        cid = int(cmd["getMore"])
        with st.lock:
            entry = st.cursors.pop(cid, None)
        if entry is None:
            raise CommandError(43, "CursorNotFound", f"cursor id {cid} not found")
        ns, rest = entry
        reply = self.cursor_reply(ns, rest, cmd.get("batchSize"), first=False)
        return reply

    def cmd_killcursors(self, db, cmd):
        st = self.server.state
        killed = []
        with st.lock:
            for cid in cmd.get("cursors", []):
                if st.cursors.pop(int(cid), None) is not None:
                    killed.append(cid)
        return {"cursorsKilled": killed, "cursorsNotFound": [], "cursorsAlive": [],
                "cursorsUnknown": [], "ok": 1.0}

    def cmd_count(self, db, cmd):
        st = self.server.state
        with st.lock:
            c = st.coll(db, cmd["count"])
            raws = list(c.docs.values()) if c else []
        flt = cmd.get("query") or {}
        n = sum(1 for r in raws if not flt or matches(bson.decode(r, DECODE), flt))
        return {"n": n, "ok": 1.0}

    def cmd_aggregate(self, db, cmd):
        pipeline = cmd.get("pipeline", [])
        name = cmd["aggregate"]
        st = self.server.state
        with st.lock:
            c = st.coll(db, name)
            n = len(c.docs) if c else 0
        # What the driver's countDocuments / estimatedDocumentCount send.
        stages = [next(iter(s)) for s in pipeline]
        if stages and stages[0] == "$collStats":
            out = [{"ns": f"{db}.{name}", "count": n}]
        elif stages and stages[-1] == "$group" and stages[:-1] in ([], ["$match"], ["$match", "$skip"]):
            out = [{"_id": 1, "n": n}] if n else []
        else:
            log(f"unsupported aggregate pipeline {pipeline}")
            raise CommandError(59, "CommandNotFound", "unsupported aggregate pipeline")
        return self.cursor_reply(f"{db}.{name}", out, (cmd.get("cursor") or {}).get("batchSize"))

    def cmd_collstats(self, db, cmd):
        st = self.server.state
        with st.lock:
            c = st.coll(db, cmd["collStats"])
            if c is None:
                raise CommandError(26, "NamespaceNotFound", "ns not found")
            n, size = len(c.docs), sum(len(r) for r in c.docs.values())
        return {"ns": f"{db}.{cmd['collStats']}", "count": n, "size": size,
                "storageSize": size, "nindexes": len(c.indexes), "wiredTiger": {}, "ok": 1.0}

    # --- writes --------------------------------------------------------------------------

    def cmd_create(self, db, cmd):
        st = self.server.state
        name = cmd["create"]
        with st.lock:
            if st.coll(db, name) is not None:
                raise CommandError(48, "NamespaceExists", f"Collection {db}.{name} already exists.")
            c = st.coll(db, name, create=True)
            c.options = {k: v for k, v in cmd.items()
                         if k not in ("create", "$db", "lsid", "$clusterTime", "writeConcern",
                                      "$readPreference", "idIndex", "txnNumber")}
            st.save()
        return {"ok": 1.0}

    def cmd_insert(self, db, cmd):
        st = self.server.state
        name = cmd["insert"]
        ordered = cmd.get("ordered", True)
        n, errors = 0, []
        with st.lock:
            c = st.coll(db, name, create=True)
            for i, d in enumerate(cmd.get("documents", [])):
                raw = d.raw if isinstance(d, RawBSONDocument) else bson.encode(d)
                doc = bson.decode(raw, DECODE)
                if "_id" not in doc:
                    doc = {"_id": bson.ObjectId(), **doc}
                    raw = bson.encode(doc)
                key = id_key(doc)
                if key in c.docs:
                    errors.append({"index": i, "code": 11000, "errmsg":
                                   f"E11000 duplicate key error collection: {db}.{name} index: _id_ dup key: {{ _id: {doc['_id']!r} }}"})
                    if ordered:
                        break
                    continue
                c.docs[key] = raw
                n += 1
            st.save()
        reply = {"n": n, "ok": 1.0}
        if errors:
            reply["writeErrors"] = errors
        return reply

    def cmd_createindexes(self, db, cmd):
        st = self.server.state
        name = cmd["createIndexes"]
        with st.lock:
            created = st.coll(db, name) is None
            c = st.coll(db, name, create=True)
            before = len(c.indexes)
            for ix in cmd.get("indexes", []):
                ix = {k: v for k, v in ix.items() if k != "ns"}
                ix.setdefault("v", 2)
                ix = {"v": ix.pop("v"), **ix}
                if any(e["name"] == ix["name"] for e in c.indexes):
                    continue
                c.indexes.append(ix)
            st.save()
        return {"createdCollectionAutomatically": created, "numIndexesBefore": before,
                "numIndexesAfter": len(c.indexes), "ok": 1.0}

    def cmd_drop(self, db, cmd):
        st = self.server.state
        name = cmd["drop"]
        with st.lock:
            if st.coll(db, name) is None:
                raise CommandError(26, "NamespaceNotFound", "ns not found")
            del st.dbs[db][name]
            st.save()
        return {"ns": f"{db}.{name}", "nIndexesWas": 1, "ok": 1.0}

    def cmd__mergeauthzcollections(self, db, cmd):
        """What mongorestore runs after loading users/roles into temporary collections:
        each user (role) of `db` ("" = every database) in the temporary collection is added to
        admin.system.users (roles); one that exists is left alone, unless `drop`, which
        replaces them all (users of that scope missing from the temporary collection go)."""
        if db != "admin":
            raise CommandError(13, "Unauthorized", "_mergeAuthzCollections runs on admin")
        st = self.server.state
        scope = cmd.get("db", "")
        drop = bool(cmd.get("drop", False))
        with st.lock:
            for arg, target in (("tempUsersCollection", "system.users"),
                                ("tempRolesCollection", "system.roles")):
                ns = cmd.get(arg)
                if not ns:
                    continue
                temp_db, temp_name = ns.split(".", 1)
                temp = st.coll(temp_db, temp_name)
                in_scope = lambda raw: not scope or bson.decode(raw, DECODE).get("db") == scope  # noqa: E731
                docs = {k: r for k, r in (temp.docs.items() if temp else []) if in_scope(r)}
                existing = st.coll("admin", target, create=True)
                if drop:
                    for key, raw in list(existing.docs.items()):
                        if in_scope(raw) and key not in docs:
                            del existing.docs[key]
                for key, raw in docs.items():
                    if drop or key not in existing.docs:
                        existing.docs[key] = raw
            if st.coll("admin", "system.users"):
                st.put("admin", "system.version", {"_id": "authSchema", "currentVersion": 5})
            st.save()
        return {"ok": 1.0}

    def cmd_dropdatabase(self, db, cmd):
        st = self.server.state
        with st.lock:
            st.dbs.pop(db, None)
            st.save()
        return {"dropped": db, "ok": 1.0}


class Server:
    def __init__(self, args):
        self.users = list(zip(args.user or [], args.password or []))
        self.auth_db = args.auth_db
        self.state = State(args.state_file)
        if args.seed:
            self.state.load(args.seed)
        if self.users:
            self.state.enable_auth(self.users, self.auth_db)
        self.state.save()
        self.req_ids = itertools.count(1)
        self.conn_ids = itertools.count(1)
        self.process_id = bson.ObjectId()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", args.port))
        self.sock.listen(64)

    def run(self):
        print(f"PORT {self.sock.getsockname()[1]}", flush=True)
        while True:
            conn, _ = self.sock.accept()
            if not self.slots.acquire(timeout=30):
                log("too many connections; refusing one")
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn):
        try:
            Connection(self, conn, next(self.conn_ids)).serve()
        finally:
            self.slots.release()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--user", action="append")
    p.add_argument("--password", action="append")
    p.add_argument("--auth-db", default="admin")
    p.add_argument("--seed")
    p.add_argument("--state-file")
    args = p.parse_args()
    if len(args.user or []) != len(args.password or []):
        p.error("each --user needs its --password")
    try:
        Server(args).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
