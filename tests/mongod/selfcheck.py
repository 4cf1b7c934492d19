#!/usr/bin/env python3
"""Checks tests/mongod/server.py with the real mongodump/mongorestore.

    /opt/backhaul-venv/bin/python tests/mongod/selfcheck.py [TOOLS_DIR]

TOOLS_DIR defaults to ../shared/mongo-tools beside the checkout. Every restore is compared
with the source server's state, document by document and index by index. Exits non-zero on
the first failure.
"""

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOLS = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "mongo-tools")
if not os.path.exists(os.path.join(TOOLS, "mongodump")):
    TOOLS = "/work/shared/mongo-tools"
N = 0


def ok(what):
    global N
    N += 1
    print(f"ok {N} - {what}")


class Server:
    def __init__(self, tmp, name, seed=None, auth=None):
        self.state_file = os.path.join(tmp, f"{name}.state.json")
        cmd = [sys.executable, os.path.join(HERE, "server.py"), "--state-file", self.state_file]
        if seed is not None:
            path = os.path.join(tmp, f"{name}.seed.json")
            with open(path, "w") as f:
                json.dump(seed, f)
            cmd += ["--seed", path]
        for user, password in auth or []:
            cmd += ["--user", user, "--password", password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline().split()[1])

    def uri(self, userinfo="", path=""):
        at = f"{userinfo}@" if userinfo else ""
        return f"mongodb://{at}127.0.0.1:{self.port}/{path}"

    def state(self):
        with open(self.state_file) as f:
            return json.load(f)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def tool(name, *args, expect=0):
    r = subprocess.run([os.path.join(TOOLS, name), *args], capture_output=True, text=True)
    if r.returncode != expect:
        sys.exit(f"FAIL: {name} {' '.join(args)} exited {r.returncode}:\n{r.stderr}")
    return r.stderr


def same(got, want, what):
    if got != want:
        sys.exit(f"FAIL: {what}\n got: {json.dumps(got)[:2000]}\nwant: {json.dumps(want)[:2000]}")


def seed():
    many = [{"_id": {"$numberInt": str(i)}, "pad": "x" * 2000,
             "n": {"$numberLong": str(i * 1_000_000_000_000)}} for i in range(700)]
    return {
        "shop": {
            "users": {"documents": [
                {"_id": {"$oid": "65a000000000000000000001"}, "email": "a@x", "age": {"$numberInt": "3"},
                 "when": {"$date": {"$numberLong": "1700000000000"}}, "f": {"$numberDouble": "1.5"},
                 "bin": {"$binary": {"base64": "AAE=", "subType": "00"}}, "sub": {"a": [1, None]}}],
                "indexes": [{"key": {"email": {"$numberInt": "1"}}, "name": "email_1", "unique": True}]},
            "big": {"documents": many},
            "a.b.c": {"documents": [{"_id": "dotted"}]},
            "empty": {"documents": []},
        },
        "inventory": {"items": {"documents": [{"_id": "i1"}]}},
    }


def main():
    tmp = tempfile.mkdtemp(prefix="mongod-selfcheck-")
    src = Server(tmp, "src", seed(), auth=[("u", "p@ss:w"), ("reader", "r")])
    try:
        run(tmp, src)
    finally:
        src.stop()
    print(f"mongod selfcheck: all {N} checks passed")


def run(tmp, src):
    login = "u:p%40ss%3Aw"
    uri = src.uri(login, "?authSource=admin")
    original = src.state()
    tool("mongodump", "--version")

    err = tool("mongodump", f"--uri={src.uri('u:wrong', '?authSource=admin')}", "--out",
               os.path.join(tmp, "x"), expect=1)
    assert "AuthenticationFailed" in err and "u:wrong@" in err, err
    err = tool("mongodump", f"--uri={src.uri()}", "--out", os.path.join(tmp, "x"), expect=1)
    assert "requires authentication" in err, err
    ok("SCRAM logins: wrong password and no login are refused (the tool prints the URI)")

    for mech in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
        tool("mongodump", f"--uri={src.uri(login, '?authSource=admin&authMechanism=' + mech)}",
             "--db", "inventory", "--out", os.path.join(tmp, "mech"))
    ok("SCRAM-SHA-1 and SCRAM-SHA-256")

    dump = os.path.join(tmp, "dump")
    err = tool("mongodump", f"--uri={uri}", "--out", dump)
    assert "done dumping shop.big (700 documents)" in err, err
    dst = Server(tmp, "dir")
    tool("mongorestore", f"--uri={dst.uri()}", "--dir", dump, "--stopOnError")
    same(dst.state(), original, "directory dump of every database restores equal")
    err = tool("mongorestore", f"--uri={dst.uri()}", "--dir", dump, "--nsInclude=shop.users")
    assert "1 document(s) failed to restore" in err, err
    tool("mongorestore", f"--uri={dst.uri()}", "--dir", dump, "--stopOnError", expect=1)
    tool("mongorestore", f"--uri={dst.uri()}", "--dir", dump, "--drop", "--stopOnError")
    same(dst.state(), original, "--drop restores equal")
    dst.stop()
    ok("directory mode; duplicate _id fails; --drop replaces")

    users = {d["_id"] for d in original["admin"]["system.users"]["documents"]}
    same(users, {"admin.u", "admin.reader"}, "users in admin.system.users")
    dst = Server(tmp, "users", auth=[("u", "p@ss:w")])
    tool("mongodump", f"--uri={dst.uri('reader:r', '?authSource=admin')}", "--db", "shop",
         "--archive=" + os.path.join(tmp, "none"), expect=1)
    err = tool("mongorestore", f"--uri={dst.uri(login, '?authSource=admin')}", "--dir", dump,
               "--stopOnError")
    assert "restoring users from" in err, err
    tool("mongodump", f"--uri={dst.uri('reader:r', '?authSource=admin')}", "--db", "shop",
         "--archive=" + os.path.join(tmp, "some"))
    by_id = lambda st: {d["_id"]: d for d in st["admin"]["system.users"]["documents"]}  # noqa
    same(by_id(dst.state())["admin.reader"], by_id(original)["admin.reader"],
         "a missing user is added as dumped; an existing one is left alone")
    dst.stop()
    ok("users: in admin.system.users, restored by _mergeAuthzCollections, and they log in")

    gz = os.path.join(tmp, "gz")
    tool("mongodump", f"--uri={uri}", "--db", "shop", "--gzip", "--out", gz)
    assert os.path.exists(os.path.join(gz, "shop", "big.bson.gz"))
    dst = Server(tmp, "gz")
    tool("mongorestore", f"--uri={dst.uri()}", "--gzip", "--dir", gz, "--nsInclude=shop.*",
         "--nsFrom=shop.$c$", "--nsTo=copy.$c$")
    same(dst.state(), {"copy": original["shop"]}, "--gzip, --nsFrom/--nsTo")
    tool("mongorestore", f"--uri={dst.uri()}", "--db", "one", "--dir", os.path.join(gz, "shop"),
         "--gzip")
    same(dst.state()["one"], original["shop"], "--db with one database's folder")
    dst.stop()
    ok("gzip directory dump; --nsFrom/--nsTo; --db with a database folder")

    archive = os.path.join(tmp, "shop.archive.gz")
    tool("mongodump", f"--uri={uri}", "--db", "shop", f"--archive={archive}", "--gzip")
    dst = Server(tmp, "arch")
    tool("mongorestore", f"--uri={dst.uri()}", f"--archive={archive}", "--gzip",
         "--nsInclude=shop.*", "--stopOnError")
    same(dst.state(), {"shop": original["shop"]}, "archive round trip")
    dst.stop()
    empty = os.path.join(tmp, "none.archive")
    tool("mongodump", f"--uri={uri}", "--db", "nope", f"--archive={empty}")
    assert os.path.getsize(empty) < 200
    ok("archive round trip; a missing database is an empty archive, exit 0")


if __name__ == "__main__":
    main()
