"""Turns bench/run.sh's raw measurements into <stamp>.json and <stamp>.md and prints the table.

  report.py RAW_JSONL META_JSON OUT_JSON OUT_MD
"""
import json
import statistics
import sys

CASES = [
    ("floor", "1. floor: pg_dump -Fc -Z0 > /dev/null"),
    ("script", "2. today's script: pg_dump -F c -f file, then boto3 upload_file (= aws s3 cp)"),
    ("pipeline", "3. shell pipeline: pg_dump -Fc -Z0 | zstd -3 -T2 | boto3 upload_fileobj"),
    ("bh_zstd", "4. backhaul PG_COMPRESSION=zstd"),
    ("bh_pg", "5. backhaul PG_COMPRESSION=pg"),
    ("bh_none", "6. backhaul PG_COMPRESSION=none"),
    ("bh_zstd_st", "4b. backhaul PG_COMPRESSION=zstd PG_ZSTD_THREADS=1 (one zstd worker)"),
    ("bh_zstd_alt", "4c. backhaul PG_COMPRESSION=zstd, BENCH_ALT_BIN (another build)"),
]
BACKHAUL = ["bh_zstd", "bh_pg", "bh_none"]
RESTORE_CASES = [
    ("r_local_1tx", "R1. pg_restore --single-transaction, local file"),
    ("r_local_jobs", "R2. pg_restore -j N, local file"),
    ("r_download", "R3. download (boto3), then pg_restore --single-transaction"),
    ("r_bh_stream", "R4. backhaul restore (streamed from S3)"),
    ("r_bh_jobs", "R5. backhaul restore --jobs N (N pg_restore fed while it downloads)"),
]
RSS_LIMIT_MIB = 100
# A run judges `restore --jobs N` against local `pg_restore -j N` only when local -j N is
# clearly faster than local -1 there (median at most this fraction of it); otherwise the machine
# is not showing what -j can do (a busy neighbour, too few cores) and a ratio to it means little.
JOBS_VALID_BELOW = 0.85
# backup --jobs (issue 32): the cases, shown in a table of their own, and their targets.
JOBS_CASES = [
    ("floor", "1. floor: pg_dump -Fc -Z0 > /dev/null"),
    ("floor_par", "P1. parallel floor: pg_dump -Fd -j J -Z0 --no-sync to a local directory"),
    ("bh_zstd", "4. backhaul PG_COMPRESSION=zstd (single stream)"),
    ("bh_jobs", "P2. backhaul PG_JOBS=J PG_COMPRESSION=zstd"),
    ("bh_jobs_none", "P2n. backhaul PG_JOBS=J PG_COMPRESSION=none (hashing and copying only)"),
]
JOBS_RESTORE_CASES = [
    ("r_local_1tx", "R1. pg_restore --single-transaction, local file"),
    ("r_local_dir_jobs", "P3. pg_restore -j J, local directory dump"),
    ("r_bh_dir_jobs", "P4. backhaul restore --jobs J of a PG_JOBS=J backup"),
]
SPOOL_LIMIT_MIB = 256
JOBS_RSS_LIMIT_MIB = 150


def mib(b):
    return b / 1048576


def human(b):
    if b is None:
        return "n/a"
    if b == 0:
        return "0 B"
    return f"{mib(b):,.1f} MiB"


def stats(runs):
    ok = [r for r in runs if r["exit"] == 0]
    out = {"runs": len(runs), "failed": len(runs) - len(ok)}
    if not ok:
        return out
    walls = [r["wall_s"] for r in ok]
    cpus = [r["user_s"] + r["sys_s"] for r in ok]
    objs = [r["object_bytes"] for r in ok if r.get("object_bytes") is not None]
    own = [r["own"] for r in ok if r.get("own")]
    if own:
        # backhaul's own CPU (getrusage RUSAGE_SELF, without pg_dump) per GB of dump (raw bytes).
        out.update(
            own_user_median_s=statistics.median(o["user_s"] for o in own),
            own_sys_median_s=statistics.median(o["sys_s"] for o in own),
            own_cpu_per_gb_median_s=statistics.median((o["user_s"] + o["sys_s"]) / (o["raw_bytes"] / 1e9) for o in own if o["raw_bytes"]),
            own_minor_faults_median=statistics.median(o["minor_faults"] for o in own),
            raw_bytes=int(statistics.median(o["raw_bytes"] for o in own)),
        )
    out.update(
        wall_min_s=min(walls),
        wall_median_s=statistics.median(walls),
        wall_all_s=walls,
        cpu_median_s=statistics.median(cpus),
        user_median_s=statistics.median(r["user_s"] for r in ok),
        sys_median_s=statistics.median(r["sys_s"] for r in ok),
        peak_rss_kb=max(r["maxrss_kb"] for r in ok),
        local_disk_bytes=max(r["disk_bytes"] for r in ok),
        object_bytes=int(statistics.median(objs)) if objs else None,
    )
    busy = [r["busy_cores"] for r in ok if r.get("busy_cores") is not None]
    if busy:
        # How many of the machine's CPUs were busy during the run (anything, the server too):
        # an anchor near nproc leaves no CPU for the work backhaul adds.
        out["busy_cores_median"] = statistics.median(busy)
    return out


def selected_all(meta):
    """Whether every default backup case was meant to run (not a BENCH_CASES subset)."""
    cases = set(meta["settings"].get("cases") or [])
    return not cases or {k for k, _ in CASES[:6]} <= cases


def restore_section(md, raw, sz, ds, meta, per_case, target):
    """The restore cases, side by side, and their targets (issues 14 and 34)."""
    if not meta["settings"].get("restore"):
        return
    jobs = meta["settings"].get("restore_jobs")
    for key, _ in RESTORE_CASES:
        per_case[key] = stats([r for r in raw if r["size_mb"] == sz and r.get("dataset", "events") == ds and r["case"] == key])
    base = per_case["r_local_1tx"].get("wall_median_s")
    md.append(f"\nRestore of the same archive into an empty database (N = {jobs}):\n")
    md.append(f"| case | runs | wall min (s) | wall median (s) | × local 1-tx | CPU user+sys median (s) | busy CPUs median (of {meta['machine']['nproc']}) | peak RSS (MiB) | local disk |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    for key, label in RESTORE_CASES:
        s = per_case[key]
        if s["runs"] == 0:
            continue
        runs = f"{s['runs'] - s['failed']}/{s['runs']}"
        if "wall_median_s" not in s:
            md.append(f"| {label} | {runs} | FAILED | | | | | | |")
            continue
        x = s["wall_median_s"] / base if base else float("nan")
        busy = f"{s['busy_cores_median']:.2f}" if "busy_cores_median" in s else "—"
        md.append(
            f"| {label} | {runs} | {s['wall_min_s']:.2f} | {s['wall_median_s']:.2f} | {x:.2f}× | "
            f"{s['cpu_median_s']:.2f} | {busy} | {s['peak_rss_kb'] / 1024:.1f} | {human(s['local_disk_bytes'])} |"
        )
    measured = {k: per_case[k] for k, _ in RESTORE_CASES if per_case[k]["runs"]}
    if any("wall_median_s" not in s for s in measured.values()):
        target("all restore cases measured", False, "a restore case failed every run; see the logs")
    st, lj, bj = (per_case[k].get("wall_median_s") for k in ("r_bh_stream", "r_local_jobs", "r_bh_jobs"))
    if None not in (st, base):
        # The cases run round-robin, so repetition k of each ran side by side: the per-repetition
        # ratios show how much of the verdict is the machine drifting between rounds.
        walls = {k: {r["rep"]: r["wall_s"] for r in raw if r["size_mb"] == sz and r.get("dataset", "events") == ds
                     and r["case"] == k and r["exit"] == 0} for k in ("r_bh_stream", "r_local_1tx")}
        pairs = sorted(walls["r_bh_stream"][k] / walls["r_local_1tx"][k]
                       for k in walls["r_bh_stream"].keys() & walls["r_local_1tx"].keys())
        paired = f"; per repetition {', '.join(f'{p:.2f}' for p in pairs)}" if pairs else ""
        target("backhaul streaming restore ≤ local pg_restore --single-transaction", st <= base,
               f"{st:.2f}s vs {base:.2f}s ({st / base:.2f}×){paired}")
    if None in (lj, bj):
        return
    name = "backhaul restore --jobs N ≤ 1.10× local pg_restore -j N"
    detail = f"{bj:.2f}s vs 1.10 × {lj:.2f}s = {1.10 * lj:.2f}s ({bj / lj:.2f}×)"
    if base is None:
        target(name, None, detail + "; no verdict: local pg_restore --single-transaction (r_local_1tx) was not measured, so the run's validity is unknown")
    elif lj > JOBS_VALID_BELOW * base:
        target(name, None, detail + f"; INVALID RUN, no verdict: local pg_restore -j N took {lj / base:.2f}× local -1 "
               f"({lj:.2f}s vs {base:.2f}s), not clearly faster (≤ {JOBS_VALID_BELOW}×): this machine did not show what -j can do")
    else:
        target(name, bj <= 1.10 * lj, detail + f"; valid: local -j N took {lj / base:.2f}× local -1")


def jobs_section(md, raw, sz, ds, meta, target):
    """backup --jobs J and the restore of its backups (issue 32): a table and the issue's targets."""
    jobs = meta["settings"].get("backup_jobs", 2)
    pick = lambda key: stats([r for r in raw if r["size_mb"] == sz and r.get("dataset", "events") == ds and r["case"] == key])
    per = {k: pick(k) for k, _ in JOBS_CASES + JOBS_RESTORE_CASES}
    if not any(per[k]["runs"] for k in ("floor_par", "bh_jobs", "r_local_dir_jobs", "r_bh_dir_jobs")):
        return
    w = lambda k: per[k].get("wall_median_s")
    for title, cases, base_key, base_name in (
        ("backup --jobs", JOBS_CASES, "floor", "floor"),
        ("restore of a backup --jobs", JOBS_RESTORE_CASES, "r_local_1tx", "local 1-tx"),
    ):
        shown = [(k, label) for k, label in cases if per[k]["runs"]]
        if not any(k in ("floor_par", "bh_jobs", "r_local_dir_jobs", "r_bh_dir_jobs") for k, _ in shown):
            continue
        base = w(base_key)
        md.append(f"\n{title} (J = {jobs}):\n")
        md.append(f"| case | runs | wall min (s) | wall median (s) | × {base_name} | CPU user+sys median (s) | busy CPUs median (of {meta['machine']['nproc']}) | peak RSS (MiB) | local disk (peak allocated) | object size |")
        md.append("|---|---|---|---|---|---|---|---|---|---|")
        for k, label in shown:
            s = per[k]
            runs = f"{s['runs'] - s['failed']}/{s['runs']}"
            if "wall_median_s" not in s:
                md.append(f"| {label} | {runs} | FAILED | | | | | | | |")
                continue
            x = f"{s['wall_median_s'] / base:.2f}×" if base else "n/a"
            busy = f"{s['busy_cores_median']:.2f}" if "busy_cores_median" in s else "—"
            md.append(f"| {label} | {runs} | {s['wall_min_s']:.2f} | {s['wall_median_s']:.2f} | {x} | {s['cpu_median_s']:.2f} | {busy} | "
                      f"{s['peak_rss_kb'] / 1024:.1f} | {human(s['local_disk_bytes'])} | {human(s.get('object_bytes')) if s.get('object_bytes') else '—'} |")
    floor, par, bj, z = w("floor"), w("floor_par"), w("bh_jobs"), w("bh_zstd")
    # Like restore --jobs: a machine on which the parallel anchor is not clearly faster than the
    # serial one (a busy neighbour, too few cores) cannot say what --jobs should reach.
    if bj is not None:
        for name, limit, anchor, anchor_name in (
            (f"backup --jobs {jobs} ≤ 0.80× floor (pg_dump -Fc -Z0 > /dev/null)", 0.80, floor, "floor"),
            (f"backup --jobs {jobs} ≤ 1.15× parallel floor (pg_dump -Fd -j {jobs} -Z0 --no-sync)", 1.15, par, "floor_par"),
        ):
            if anchor is None:
                target(name, None, f"no verdict: {anchor_name} was not measured")
                continue
            detail = f"{bj:.2f}s vs {limit:.2f} × {anchor:.2f}s = {limit * anchor:.2f}s ({bj / anchor:.2f}×)"
            if floor is None or par is None:
                target(name, None, detail + "; no verdict: floor and floor_par are both needed to know whether the run is valid")
            elif par > JOBS_VALID_BELOW * floor:
                target(name, None, detail + f"; INVALID RUN, no verdict: pg_dump -j {jobs} to local disk took {par / floor:.2f}× the "
                       f"single-thread floor ({par:.2f}s vs {floor:.2f}s), not clearly faster (≤ {JOBS_VALID_BELOW}×): this machine did not show what -j can do")
            else:
                target(name, bj <= limit * anchor, detail + f"; valid: floor_par took {par / floor:.2f}× floor")
        spool = per["bh_jobs"].get("local_disk_bytes")
        target(f"backup --jobs {jobs} peak allocated spool ≤ {SPOOL_LIMIT_MIB} MiB", spool is not None and mib(spool) <= SPOOL_LIMIT_MIB, human(spool))
        rss = per["bh_jobs"].get("peak_rss_kb")
        target(f"backup --jobs {jobs} peak RSS ≤ {JOBS_RSS_LIMIT_MIB} MiB", rss is not None and rss / 1024 <= JOBS_RSS_LIMIT_MIB,
               f"{rss / 1024:.1f} MiB" if rss else "n/a")
    elif per["bh_jobs"]["runs"]:
        target(f"backup --jobs {jobs} measured", False, "bh_jobs failed every run; see the logs")
    # The single-stream target (bh_zstd ≤ 1.10× floor) is judged once, in the backup section.
    one, lj, bdj = w("r_local_1tx"), w("r_local_dir_jobs"), w("r_bh_dir_jobs")
    if bdj is not None:
        name = f"restore --jobs {jobs} of a --jobs {jobs} backup ≤ 1.10× local pg_restore -j {jobs} of a directory dump"
        if lj is None:
            target(name, None, "no verdict: r_local_dir_jobs was not measured")
        else:
            detail = f"{bdj:.2f}s vs 1.10 × {lj:.2f}s = {1.10 * lj:.2f}s ({bdj / lj:.2f}×)"
            if one is None:
                target(name, None, detail + "; no verdict: local pg_restore --single-transaction (r_local_1tx) was not measured, so the run's validity is unknown")
            elif lj > JOBS_VALID_BELOW * one:
                target(name, None, detail + f"; INVALID RUN, no verdict: local pg_restore -j {jobs} took {lj / one:.2f}× local -1 "
                       f"({lj:.2f}s vs {one:.2f}s), not clearly faster (≤ {JOBS_VALID_BELOW}×): this machine did not show what -j can do")
            else:
                target(name, bdj <= 1.10 * lj, detail + f"; valid: local -j {jobs} took {lj / one:.2f}× local -1")
    elif per["r_bh_dir_jobs"]["runs"]:
        target(f"restore --jobs {jobs} of a --jobs backup measured", False, "r_bh_dir_jobs failed every run; see the logs")
    checks = [r for r in raw if r["size_mb"] == sz and r.get("dataset", "events") == ds and r["case"] == "check_dir_restore"]
    if checks:
        ok = all(r.get("equal") for r in checks)
        target(f"the database restored from a --jobs {jobs} backup: plain pg_dump equals the source's", ok,
               "equal (sha256 of both plain dumps' sorted lines, \\restrict lines left out)" if ok else "the plain dumps DIFFER")
    elif per["r_bh_dir_jobs"]["runs"]:
        target(f"the database restored from a --jobs {jobs} backup: plain pg_dump equals the source's", False, "not checked: the last r_bh_dir_jobs run failed")


def main():
    raw_path, meta_path, out_json, out_md = sys.argv[1:]
    meta = json.load(open(meta_path))
    raw = [json.loads(line) for line in open(raw_path) if line.strip()]
    server = meta["s3_server"]
    result = {"machine": meta["machine"], "settings": meta["settings"], "s3_server": server, "sizes": []}
    md = []
    m = meta["machine"]
    md.append(f"# backhaul benchmark {meta['stamp']}\n")
    md.append(
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_mib']:,} MiB RAM; "
        f"{m['postgres']}; pg_dump {m['pg_dump']}; zstd {m['zstd']}; backhaul `{m['backhaul_bin']}` ({m['backhaul_version']}).  "
    )
    md.append(f"S3 server for every upload figure: **{server}**. Repetitions: {meta['settings']['repeat']} (interleaved).\n")
    all_pass = True
    all_valid = True
    for size in meta["sizes"]:
        sz = size["requested_mb"]
        ds = size.get("dataset", "events")
        per_case = {}
        for key, _ in CASES:
            per_case[key] = stats([r for r in raw if r["size_mb"] == sz and r.get("dataset", "events") == ds and r["case"] == key])
        floor = per_case["floor"].get("wall_median_s")
        for key, s in per_case.items():
            if floor and "wall_median_s" in s:
                s["x_floor"] = s["wall_median_s"] / floor
        md.append(
            f"\n## Dataset `{ds}`, ~{sz} MB requested: pg_database_size = {human(size['db_bytes'])}, "
            f"{size['rows']:,} rows" + {"events": " in `events`", "two": " in each of `events` and `events2`",
                                        "many": " shared by 200 tables"}.get(ds, "") + "\n"
        )
        targets = []

        def get(case, field):
            return per_case[case].get(field)

        def target(name, ok, detail):
            # ok None: no verdict (the run cannot judge this target).
            targets.append({"target": name, "pass": None if ok is None else bool(ok), "detail": detail})

        if meta["settings"].get("backup", True) and any(per_case[k]["runs"] for k, _ in CASES):
            md.append("| case | S3 server | runs | wall min (s) | wall median (s) | × floor | CPU user+sys median (s) | peak RSS (MiB) | local disk | object size |")
            md.append("|---|---|---|---|---|---|---|---|---|---|")
            for key, label in CASES:
                s = per_case[key]
                if s["runs"] == 0:
                    continue
                srv = "— (no upload)" if key == "floor" else meta.get("s3_server_short", server)
                label = label.replace("|", "\\|")
                runs = f"{s['runs'] - s['failed']}/{s['runs']}"
                if "wall_median_s" not in s:
                    md.append(f"| {label} | {srv} | {runs} | FAILED | | | | | | |")
                    continue
                md.append(
                    f"| {label} | {srv} | {runs} | {s['wall_min_s']:.2f} | {s['wall_median_s']:.2f} | "
                    f"{s.get('x_floor', float('nan')):.2f}× | {s['cpu_median_s']:.2f} | {s['peak_rss_kb'] / 1024:.1f} | "
                    f"{human(s['local_disk_bytes'])} | {human(s['object_bytes']) if key != 'floor' else '—'} |"
                )
            owned = [(k, label) for k, label in CASES if "own_cpu_per_gb_median_s" in per_case[k]]
            if owned:
                md.append("\nbackhaul's own CPU (getrusage RUSAGE_SELF at the end of the backup: every thread of backhaul, "
                          "not pg_dump; medians), per GB of dump (the raw pg_dump stream):\n")
                md.append("| case | user (s) | sys (s) | **CPU per GB of dump (s)** | minor faults | dump size |")
                md.append("|---|---|---|---|---|---|")
                for k, label in owned:
                    s = per_case[k]
                    md.append(f"| {label.split('.')[0]}. {k} | {s['own_user_median_s']:.2f} | {s['own_sys_median_s']:.2f} | "
                              f"**{s['own_cpu_per_gb_median_s']:.2f}** | {s['own_minor_faults_median']:,.0f} | {human(s['raw_bytes'])} |")
            z, pipe, script = get("bh_zstd", "wall_median_s"), get("pipeline", "wall_median_s"), get("script", "wall_median_s")
            if None not in (z, floor):
                target("backhaul zstd median ≤ 1.10× floor median (issue 32)", z <= 1.10 * floor, f"{z:.2f}s vs 1.10 × {floor:.2f}s = {1.10 * floor:.2f}s ({z / floor:.2f}×)")
            if None in (pipe, script) and selected_all(meta):
                target("all cases measured", False, "a case failed every run; see the logs")
            elif None in (z, floor, pipe, script):
                pass
            else:
                target("backhaul zstd median ≤ 1.15× floor median", z <= 1.15 * floor, f"{z:.2f}s vs 1.15 × {floor:.2f}s = {1.15 * floor:.2f}s ({z / floor:.2f}×)")
                target("backhaul zstd faster than the shell pipeline", z < pipe, f"{z:.2f}s vs {pipe:.2f}s")
                target("backhaul zstd ≥ 3× faster than today's script", script >= 3 * z, f"{script:.2f}s / {z:.2f}s = {script / z:.2f}×")
                zo, so = get("bh_zstd", "object_bytes"), get("script", "object_bytes")
                target("backhaul zstd object ≤ today's script's object", zo is not None and so is not None and zo <= so, f"{zo} B vs {so} B ({human(zo)} vs {human(so)})" if zo and so else "n/a")
            measured = [k for k in BACKHAUL if per_case[k]["runs"]]
            disks = {k: get(k, "local_disk_bytes") for k in measured}
            target("0 bytes local disk for backhaul (all modes)", all(d == 0 for d in disks.values()), ", ".join(f"{k}={human(v)}" for k, v in disks.items()))
            rss = {k: get(k, "peak_rss_kb") for k in measured}
            target(
                f"backhaul peak RSS ≤ {RSS_LIMIT_MIB} MiB (all modes)",
                all(v is not None and v / 1024 <= RSS_LIMIT_MIB for v in rss.values()),
                ", ".join(f"{k}={v / 1024:.1f} MiB" if v else f"{k}=n/a" for k, v in rss.items()),
            )
            zo, no = get("bh_zstd", "object_bytes"), get("bh_none", "object_bytes")
            if zo and no:
                md.append(f"\nUncompressed dump (bh_none object) {human(no)}; zstd -3 ratio {no / zo:.2f}×; "
                          f"pg_dump's own compression ratio {no / get('bh_pg', 'object_bytes'):.2f}×." if get("bh_pg", "object_bytes") else "")
        restore_section(md, raw, sz, ds, meta, per_case, target)
        jobs_section(md, raw, sz, ds, meta, target)
        md.append("\nTargets:\n")
        for t in targets:
            if t["pass"] is None:
                all_valid = False
                md.append(f"- **NO VERDICT** {t['target']}: {t['detail']}")
                continue
            all_pass &= t["pass"]
            md.append(f"- **{'PASS' if t['pass'] else 'FAIL'}** {t['target']}: {t['detail']}")
        result["sizes"].append({**size, "cases": per_case, "targets": targets})

    if len({s["requested_mb"] for s in meta["sizes"]}) > 1 and meta["settings"].get("backup", True):
        md.append("\n## Peak RSS flatness (backhaul, MiB; includes its pg_dump child, whichever is larger)\n")
        md.append("| mode | " + " | ".join(f"~{s['requested_mb']} MB" for s in meta["sizes"]) + " |")
        md.append("|---|" + "---|" * len(meta["sizes"]))
        for k in BACKHAUL:
            cells = []
            for s in result["sizes"]:
                v = s["cases"][k].get("peak_rss_kb")
                cells.append(f"{v / 1024:.1f}" if v else "n/a")
            md.append(f"| {k} | " + " | ".join(cells) + " |")
    md.append(
        "\nNotes: wall = the measured command start to end (today's script: dump + upload). CPU and peak RSS come from "
        "GNU time -v and cover the command and its children (pg_dump, zstd, python), not the PostgreSQL server or the "
        "S3 server; for pipelines and backhaul, peak RSS is the largest single process, not the sum. Local disk = the "
        "largest size of the files in the run's private TMPDIR, sampled every 0.1 s (for today's script, the dump file size)."
    )
    result["all_targets_pass"] = all_pass
    result["every_target_judged"] = all_valid
    if not all_valid:
        md.append("\n**Some targets got no verdict (see NO VERDICT above): rerun on a quieter machine.**")
    text = "\n".join(md) + "\n"
    json.dump(result, open(out_json, "w"), indent=2)
    open(out_md, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
