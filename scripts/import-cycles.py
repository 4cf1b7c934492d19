#!/usr/bin/env python3
"""Lists import circles between backhaul's modules (issue 33): module A uses B and B uses A,
directly or through others. A module is a file (src/x.rs = x, src/x/mod.rs = x, src/x/y.rs =
x::y); a child's use of its own ancestors (the shared types in its folder's mod.rs) is not
counted, a parent's use of its children is; its inline `#[cfg(test)] mod …` is left out (tests may reach anywhere). Exit 1 when any
circle exists, printing each strongly connected group and the edges inside it.

Usage: scripts/import-cycles.py [src-dir]"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
root = os.path.normpath(root)


def module_of(path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] in ("mod", "main", "lib"):
        rel = rel[:-1]
    return "::".join(rel)


files = {}
for d, _, names in os.walk(root):
    for n in names:
        if n.endswith(".rs"):
            p = os.path.join(d, n)
            files[module_of(p)] = p
modules = set(files)


def strip(src):
    # Comments and strings hold paths that are not uses.
    src = re.sub(r"//[^\n]*", "", src)
    src = re.sub(r'"(?:\\.|[^"\\])*"', '""', src)
    # Inline test modules: from `#[cfg(test)]` + `mod` to the end of their braces.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*mod\s+\w+\s*\{", src):
        if m.start() < i:
            continue
        out.append(src[i : m.start()])
        depth, j = 1, m.end()
        while j < len(src) and depth:
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            j += 1
        i = j
    out.append(src[i:])
    return "".join(out)


def expand(tree):
    """`a::{b, c::{d}}` -> ["a::b", "a::c::d"]."""
    tree = tree.strip()
    m = re.match(r"^(.*?)\{(.*)\}$", tree, re.S)
    if not m:
        return [tree]
    head, body = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    return [head + q for p in parts if p.strip() for q in expand(p)]


def resolve(mod, path):
    segs = [s for s in re.split(r"\s*::\s*", path.strip()) if s]
    if not segs:
        return None
    here = mod.split("::") if mod else []
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    elif mod and f"{mod}::{segs[0]}" in modules or not mod and segs[0] in modules:
        base = list(here)  # a child module named without a prefix
    else:
        return None
    best = None
    for k in range(len(segs) + 1):
        cand = "::".join(base + segs[:k])
        if cand in modules:
            best = cand
    return best


edges = {m: set() for m in modules}
for mod, path in files.items():
    src = strip(open(path, encoding="utf-8").read())
    refs = []
    for u in re.finditer(r"\buse\s+([^;]+);", src):
        refs += expand(u.group(1).split(" as ")[0] if "{" not in u.group(1) else u.group(1))
    refs += re.findall(r"(?<![\w:])((?:crate|super|self|[a-z_]\w*)(?:\s*::\s*\w+)+)", src)
    for r in refs:
        r = re.sub(r"\s+as\s+\w+", "", r)
        t = resolve(mod, r)
        # A folder's children may use what its mod.rs shares (backup/plan.rs uses super::Job):
        # the parent owns them; only the other way round, or between strangers, is a circle.
        if t is not None and t != mod and not (mod + "::").startswith(t + "::" if t else ""):
            edges[mod].add(t)

# Tarjan's strongly connected components.
index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]


def visit(v):
    index[v] = low[v] = n[0]
    n[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))


sys.setrecursionlimit(10000)
for v in sorted(modules):
    if v not in index:
        visit(v)
for comp in sccs:
    print("circle: " + ", ".join(m or "crate" for m in comp))
    for a in comp:
        for b in sorted(edges[a] & set(comp)):
            print(f"  {a or 'crate'} -> {b or 'crate'}")
if not sccs:
    print(f"no import circles among {len(modules)} modules")
sys.exit(1 if sccs else 0)
