#!/usr/bin/env python3
"""Create deterministic stand-in MongoDB databases (see README.md).

  mongo_fixture.py --data DIR --db NAME [--large-mb N] [--seed S] [--second-db NAME]
  mongo_fixture.py --compare DIR_A DIR_B [--exact]

Creation writes <DIR>/<db>/<coll>.bson + .metadata.json, exactly what mongodump
writes, and prints a JSON summary {db: {coll: {"documents": n, "bytes": b}}}.
--compare exits 0 when two data (or dump) trees hold the same collections with
byte-identical .bson files and metadata equal apart from "uuid" (--exact: the
metadata bytes must match too); otherwise it prints the differences, exits 1.
"""
import argparse
import datetime
import json
import os
import random
import shutil
import sys

sys.dont_write_bytecode = True  # keep tests/standins free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import _standin as S  # noqa: E402
from _standin import Binary, Int64, ObjectId  # noqa: E402

BASE = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
NAMES = ["Alice Martin", "Zoë Dubois", "José Álvarez", "Łukasz Wiśniewski", "山田太郎",
         "Ørjan Håland", "Mario Rossi", "Ana Lúcia 🙂", "Οδυσσέας", "Иван Петров"]
CITIES = ["Paris", "Kraków", "東京", "São Paulo", "Oslo", "Zürich"]
WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
         "incididunt ut labore et dolore magna aliqua").split()


def i(n):
    return {"$numberInt": str(n)}


def index(key, name, **extra):
    doc = {"v": i(2), "key": {k: i(v) for k, v in key}, "name": name}
    doc.update(extra)
    return doc


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)
        self.counter = self.r.randrange(1 << 24)

    def oid(self, when):
        self.counter = (self.counter + 1) % (1 << 24)
        secs = int((when - S.EPOCH).total_seconds())
        return ObjectId(secs.to_bytes(4, "big") + self.r.randbytes(5) + self.counter.to_bytes(3, "big"))

    def when(self, days=365):
        return BASE + datetime.timedelta(milliseconds=self.r.randrange(days * 86400 * 1000))

    def text(self, n):
        return " ".join(self.r.choice(WORDS) for _ in range(n))

    def uuid(self):
        return self.r.randbytes(16).hex()


def users(g, n=200):
    out = []
    for k in range(n):
        created = g.when()
        name = NAMES[k % len(NAMES)]
        out.append({
            "_id": g.oid(created), "name": "%s #%d" % (name, k),
            "email": "user%d@example.com" % k, "age": g.r.randrange(18, 90),
            "balance": round(g.r.uniform(-500, 50000), 2), "visits": Int64(g.r.randrange(1 << 40)),
            "active": g.r.random() < 0.8, "nickname": None if k % 3 else "nick-%d" % k,
            "created_at": created,
            "address": {"street": "%d %s street" % (g.r.randrange(1, 999), g.r.choice(WORDS)),
                        "city": g.r.choice(CITIES), "zip": "%05d" % g.r.randrange(100000),
                        "geo": {"lat": g.r.uniform(-90, 90), "lng": g.r.uniform(-180, 180)}},
            "tags": g.r.sample(WORDS, g.r.randrange(0, 5)),
            "scores": [g.r.randrange(100) for _ in range(g.r.randrange(1, 6))],
        })
    return out


def orders(g, user_docs, n=500):
    out = []
    for _ in range(n):
        placed = g.when()
        items = [{"sku": "SKU-%04d" % g.r.randrange(10000), "qty": g.r.randrange(1, 5),
                  "price": round(g.r.uniform(1, 300), 2)} for _ in range(g.r.randrange(1, 5))]
        out.append({"_id": g.oid(placed), "user_id": g.r.choice(user_docs)["_id"], "items": items,
                    "total": round(sum(it["qty"] * it["price"] for it in items), 2),
                    "status": g.r.choice(["new", "paid", "shipped", "cancelled"]),
                    "placed_at": placed, "notes": None if g.r.random() < 0.7 else g.text(6)})
    return out


def events(g, n=300):
    return [{"_id": k + 1, "type": g.r.choice(["login", "logout", "purchase", "error"]),
             "ts": g.when(), "payload": {"ok": g.r.random() < 0.9, "latency_ms": g.r.uniform(0, 900),
                                         "path": "/api/v1/" + g.r.choice(WORDS)}}
            for k in range(n)]


def gridfs(g):
    files, chunks, chunk_size = [], [], 255 * 1024
    for name, size in (("hello.txt", 1000), ("photo.jpg", 300 * 1024), ("empty.bin", 0)):
        up = g.when()
        fid = g.oid(up)
        data = b"Hello, GridFS!\n" * (size // 15) + b"!" * (size % 15) if name == "hello.txt" \
            else g.r.randbytes(size)
        files.append({"_id": fid, "length": Int64(size), "chunkSize": chunk_size, "uploadDate": up,
                      "filename": name, "metadata": {"contentType": "application/octet-stream"}})
        for n, off in enumerate(range(0, size, chunk_size)):
            chunks.append({"_id": g.oid(up), "files_id": fid, "n": n,
                           "data": Binary(data[off:off + chunk_size], 0)})
    return files, chunks


def audit_log(g, megabytes):
    out, total, seq = [], 0, 0
    while total < megabytes * 1024 * 1024:
        at = g.when()
        doc = {"_id": g.oid(at), "seq": Int64(seq), "at": at, "actor": "user%d" % g.r.randrange(200),
               "action": g.r.choice(["read", "update", "delete", "grant"]),
               "ip": "10.%d.%d.%d" % (g.r.randrange(256), g.r.randrange(256), g.r.randrange(256)),
               "details": {"before": g.text(40), "after": g.text(40),
                           "token": g.r.randbytes(160).hex()}}
        out.append(doc)
        total += len(S.encode(doc))
        seq += 1
    return out


def write_collection(root, db, name, docs, indexes, g, summary):
    bson = b"".join(S.encode(d) for d in docs)
    meta = {"indexes": [index([("_id", 1)], "_id_")] + indexes, "uuid": g.uuid(),
            "collectionName": name, "type": "collection"}
    S.write_atomic(os.path.join(root, db, name + ".bson"), bson)
    S.write_atomic(os.path.join(root, db, name + ".metadata.json"), S.metadata_json(meta))
    summary.setdefault(db, {})[name] = {"documents": len(docs), "bytes": len(bson)}


def make_main_db(root, db, large_mb, seed, summary):
    g = Gen("%s/%s" % (seed, db))
    shutil.rmtree(os.path.join(root, db), ignore_errors=True)
    u = users(g)
    write_collection(root, db, "users", u, [index([("email", 1)], "email_1", unique=True)], g, summary)
    write_collection(root, db, "orders", orders(g, u),
                     [index([("user_id", 1), ("placed_at", -1)], "user_id_1_placed_at_-1")], g, summary)
    write_collection(root, db, "events.2024", events(g),
                     [index([("ts", 1)], "ts_1", expireAfterSeconds=i(86400 * 365))], g, summary)
    files, chunks = gridfs(g)
    write_collection(root, db, "fs.files", files,
                     [index([("filename", 1), ("uploadDate", 1)], "filename_1_uploadDate_1")], g, summary)
    write_collection(root, db, "fs.chunks", chunks,
                     [index([("files_id", 1), ("n", 1)], "files_id_1_n_1", unique=True)], g, summary)
    write_collection(root, db, "audit_log", audit_log(g, large_mb), [], g, summary)
    write_collection(root, db, "empty", [], [], g, summary)


def make_second_db(root, db, seed, summary):
    g = Gen("%s/%s" % (seed, db))
    shutil.rmtree(os.path.join(root, db), ignore_errors=True)
    items = [{"_id": "item-%03d" % k, "title": g.text(3), "stock": g.r.randrange(50),
              "price": round(g.r.uniform(1, 99), 2), "updated": g.when()} for k in range(50)]
    write_collection(root, db, "items", items, [index([("title", 1)], "title_1")], g, summary)
    write_collection(root, db, "settings", [{"_id": "global", "theme": "dark", "limits": {"max": 10}}],
                     [], g, summary)


def tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            full = os.path.join(dirpath, f)
            out[os.path.relpath(full, root)] = full
    return out


def compare(a, b, exact):
    ta, tb = tree(a), tree(b)
    problems = ["only in %s: %s" % (a, p) for p in sorted(set(ta) - set(tb))]
    problems += ["only in %s: %s" % (b, p) for p in sorted(set(tb) - set(ta))]
    for p in sorted(set(ta) & set(tb)):
        da, db_ = S.read_bytes(ta[p]), S.read_bytes(tb[p])
        if da == db_:
            continue
        if p.endswith(".metadata.json") and not exact:
            ja, jb = json.loads(da), json.loads(db_)
            ja.pop("uuid", None)
            jb.pop("uuid", None)
            if ja == jb:
                continue
        problems.append("differs: %s" % p)
    for line in problems:
        print(line)
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--db")
    ap.add_argument("--large-mb", type=float, default=4.0)
    ap.add_argument("--seed", default="1")
    ap.add_argument("--second-db")
    ap.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"))
    ap.add_argument("--exact", action="store_true")
    args = ap.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare, args.exact))
    if not args.data or not (args.db or args.second_db):
        ap.error("--data and --db (and/or --second-db) are required")
    os.makedirs(args.data, exist_ok=True)
    summary = {}
    if args.db:
        make_main_db(args.data, args.db, args.large_mb, args.seed, summary)
    if args.second_db:
        make_second_db(args.data, args.second_db, args.seed, summary)
    print(json.dumps(summary, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
