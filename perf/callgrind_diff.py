#!/usr/bin/env python3
"""Per-function Ir of two callgrind files (old, new), per request, largest growth first.

    perf/callgrind_diff.py OLD.out NEW.out N [TOP]
    perf/callgrind_diff.py OLD.out NEW.out N TOP FUNCTION   # also what FUNCTION calls

Functions are matched by their demangled name (Rust's hash suffix is not part of it), over all
source files (inlined code is summed into the function it was inlined into). "self" is the
function's own instructions; "incl" adds what its calls cost (calls to itself left out).
Prints self and inclusive Ir per request (the file totals divided by N) for old and new.
"""
import re
import sys
from collections import defaultdict


def load(path):
    names = {}
    self_ir = defaultdict(int)
    calls_ir = defaultdict(int)
    edges = defaultdict(int)
    fn = None
    callee = None
    pending_call = False

    def name(kind_value):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?$", kind_value)
        if not m:
            return kind_value
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "?")

    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line[0] == "#":
                continue
            if line.startswith("fn="):
                fn = name(line[3:])
                continue
            if line.startswith("cfn="):
                callee = name(line[4:])
                continue
            if line.startswith("calls="):
                pending_call = True
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                ir = int(parts[1]) if len(parts) > 1 else 0
                if pending_call:
                    if callee != fn:
                        calls_ir[fn] += ir
                        edges[(fn, callee)] += ir
                    pending_call = False
                elif fn is not None:
                    self_ir[fn] += ir
    incl = {f: self_ir[f] + calls_ir[f] for f in set(self_ir) | set(calls_ir)}
    return self_ir, incl, edges


def main():
    old, new, n = sys.argv[1], sys.argv[2], float(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 25
    os_, oi, oe = load(old)
    ns, ni, ne = load(new)
    tot_o, tot_n = sum(os_.values()) / n, sum(ns.values()) / n
    print(f"total Ir per request: old {tot_o:.0f}  new {tot_n:.0f}  "
          f"delta {tot_n - tot_o:+.0f}  ratio {tot_n / tot_o:.3f}")
    for title, o, nn in (("self", os_, ns), ("inclusive", oi, ni)):
        print(f"\n{title} Ir per request, largest growth first")
        print(f"{'old':>9} {'new':>9} {'delta':>8}  function")
        keys = set(o) | set(nn)
        rows = sorted(keys, key=lambda k: (nn.get(k, 0) - o.get(k, 0)), reverse=True)
        for k in rows[:top]:
            a, b = o.get(k, 0) / n, nn.get(k, 0) / n
            print(f"{a:9.0f} {b:9.0f} {b - a:+8.0f}  {k[:150]}")
        print("  ... largest fall:")
        for k in rows[-8:]:
            a, b = o.get(k, 0) / n, nn.get(k, 0) / n
            print(f"{a:9.0f} {b:9.0f} {b - a:+8.0f}  {k[:150]}")
    if len(sys.argv) > 5:
        caller = sys.argv[5]
        print(f"\n{caller}: self and callees (inclusive), Ir per request")
        print(f"{'old':>9} {'new':>9} {'delta':>8}  callee")
        a, b = os_.get(caller, 0) / n, ns.get(caller, 0) / n
        print(f"{a:9.0f} {b:9.0f} {b - a:+8.0f}  (self)")
        callees = {c for (f, c) in oe if f == caller} | {c for (f, c) in ne if f == caller}
        for c in sorted(callees, key=lambda c: -(ne.get((caller, c), 0) + oe.get((caller, c), 0))):
            a, b = oe.get((caller, c), 0) / n, ne.get((caller, c), 0) / n
            print(f"{a:9.0f} {b:9.0f} {b - a:+8.0f}  {c[:150]}")


if __name__ == "__main__":
    main()
