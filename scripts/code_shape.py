#!/usr/bin/env python3
"""The code's shape, measured: longest functions, import circles between files
and between top-level modules, and imports that run against DESIGN.md §8's
layer order (back-arrows).

    python3 scripts/code_shape.py [src]

Text only: it reads `fn` bodies by brace depth and `use` statements (crate::,
super::), outside `#[cfg(test)]`. Prints a report; exits 0.
"""
import os, re, sys, itertools
from collections import defaultdict

ROOT = sys.argv[1] if len(sys.argv) > 1 else "src"

def functions(path):
    lines = open(path).read().split("\n")
    out = []
    in_test = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"\s*#\[cfg\(test\)\]", line):
            break  # tests come last in each file
        m = re.match(r"\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?fn\s+(\w+)", line)
        if m:
            depth, started, j = 0, False, i
            while j < len(lines):
                s = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
                s = re.sub(r"'(\\.|[^'\\])'", "''", s)
                s = s.split("//")[0]
                depth += s.count("{") - s.count("}")
                if "{" in s: started = True
                if started and depth <= 0: break
                if not started and s.rstrip().endswith(";"): break
                j += 1
            out.append((j - i + 1, m.group(5), path, i + 1))
            i = j + 1 if started else i + 1
            continue
        i += 1
    return out

fns = []
for d, _, files in os.walk(ROOT):
    for f in files:
        if f.endswith(".rs"):
            fns += functions(os.path.join(d, f))
fns.sort(reverse=True)
print("longest functions:")
for n, name, path, line in fns[:8]:
    print(f"  {n:4d}  {path}:{line} {name}")
print(f"functions over 60 lines: {sum(1 for f in fns if f[0] > 60)}")

# ---- imports: file-level graph inside each directory, module-level graph at the top ----
def use_statements(path):
    text = open(path).read()
    text = text.split("#[cfg(test)]")[0]
    return re.findall(r"^\s*(?:pub\s+)?use\s+([^;]+);", text, re.M)

def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] in ("mod", "lib", "main"): parts = parts[:-1]
    return parts

def top_names(tree):
    """names directly under the root of a use tree: 'a::{b, c::d}' → a; '{a, b::c}' → a, b"""
    tree = tree.strip()
    if tree.startswith("{"):
        inner, depth, cur, names = tree[1:-1], 0, "", []
        for ch in inner:
            if ch == "{": depth += 1
            if ch == "}": depth -= 1
            if ch == "," and depth == 0: names.append(cur); cur = ""
            else: cur += ch
        names.append(cur)
        return [n.strip().split("::")[0].strip() for n in names if n.strip()]
    return [tree.split("::")[0].strip()]

def rest_after(tree, first):
    return tree.strip()[len(first)+2:] if tree.strip().startswith(first + "::") else ""

graph = defaultdict(set)   # module path tuple -> set of module path tuples
mods = set()
for d, _, files in os.walk(ROOT):
    for f in files:
        if not f.endswith(".rs") or "bin" in d.split(os.sep): continue
        p = os.path.join(d, f); m = tuple(module_of(p)); mods.add(m)
        for u in use_statements(p):
            u = re.sub(r"\s+", " ", u)
            if u.startswith("crate::"):
                body = u[len("crate::"):]
                for n in top_names(body):
                    if n: graph[m].add((n,) + tuple(top_names(rest_after(body, n))[:1]) if rest_after(body, n) else (n,))
            elif u.startswith("super::"):
                parent = m[:-1] if not os.path.basename(p) == "mod.rs" else m[:-1]
                base = m[:-1]
                body = u[len("super::"):]
                for n in top_names(body):
                    if n and n != "self": graph[m].add(base + (n,))

def norm(t):
    # map to an existing module: longest prefix that is a module
    for k in range(len(t), 0, -1):
        if t[:k] in mods: return t[:k]
    return None

edges = defaultdict(set)
for a, bs in graph.items():
    for b in bs:
        nb = norm(b)
        if nb and nb != a and not (a[:len(nb)] == nb):
            edges[a].add(nb)

def sccs(nodes, edges):
    index, low, stack, on, out, i = {}, {}, [], set(), [], [0]
    def strong(v):
        index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in index: strong(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(comp)
    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index: strong(v)
    return out

# file-level circles inside a directory
circles = [c for c in sccs(sorted(mods), edges)]
print(f"import circles (files): {len(circles)}")
for c in circles: print("  " + " ↔ ".join("::".join(x) for x in sorted(c)))
# top-level modules, in DESIGN.md §8's order (a module may import only from earlier layers)
LAYERS = [
    {"api", "recorder", "telemetry"},
    {"crd", "store"},
    {"metrics"},
    {"server", "events", "workloads"},
    {"leader", "reconcile"},
    {"serve"},
    {"runtime"},
]
layer_of = {m: i for i, layer in enumerate(LAYERS) for m in layer}
top = defaultdict(set)
for a, bs in edges.items():
    for b in bs:
        if a and b and a[0] != b[0]: top[a[0]].add(b[0])
tc = sccs(sorted({m[0] for m in mods if m}), top)
print(f"import circles (top-level modules): {len(tc)}")
for c in tc: print("  " + " ↔ ".join(sorted(c)))
back = [(a, b) for a in sorted(top) for b in sorted(top[a]) if layer_of.get(b, -1) >= layer_of.get(a, 99)]
print(f"back-arrows (against the layer order): {len(back)}")
for a, b in back: print(f"  {a} -> {b}")
print("module imports:")
for a in sorted(top): print(f"  {a} -> {', '.join(sorted(top[a]))}")
main_uses = sorted({n for u in use_statements(os.path.join(ROOT, "main.rs")) if u.startswith("tenant_config_controller::")
                    for n in top_names(re.sub(r"\s+", " ", u)[len("tenant_config_controller::"):])})
print(f"main.rs imports from the library: {', '.join(main_uses)}")
for d, _, files in os.walk(ROOT):
    for f in files:
        if f.endswith(".rs"):
            text = open(os.path.join(d, f)).read()
            m = re.search(r"pub struct Context \{(.*?)\n\}", text, re.S)
            if m:
                fields = [l for l in m.group(1).split("\n") if re.match(r"\s*(pub\s+)?\w+:", l)]
                print(f"Context fields ({os.path.join(d, f)}): {len(fields)}")
