#!/usr/bin/env python3
"""Where a server's threads wait during perf/disk.sh's load (used by disk.sh, standard library only).

  disk_sample.py states PROCS_FILE SECONDS TIDS_OUT [HZ]
      Samples the state (R running, S sleeping, D waiting on I/O) and wchan of every thread of
      the processes listed in PROCS_FILE (a cgroup's cgroup.procs) HZ times a second for SECONDS,
      writes the thread ids seen to TIDS_OUT and prints each thread's shares and top wchans,
      then one line `worker R S D` (shares of the serving thread: gatecache's worker-0, nginx's
      worker process).

  perf script -i FILE | disk_sample.py offcpu TIDS_FILE SECONDS
      From `perf record -a -g -e sched:sched_switch`: for the threads in TIDS_FILE, the time off
      CPU by state and kernel stack (from switching out to switching back in), top stacks first.
"""
import collections
import os
import re
import sys
import time


def label(pid, tid):
    """A thread's name: its comm; nginx's processes by their title (worker, cache manager)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return None
    if comm == "nginx":
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
            comm = title[: title.find("process") + len("process")] if "process" in title else title
        except OSError:
            pass
    return re.sub(r"\d{3,}$", "N", comm)  # iou-wrk-12345 -> iou-wrk-N


def states(procs_file, seconds, tids_out, hz=100):
    with open(procs_file) as f:
        pids = [int(x) for x in f.read().split()]
    counts = collections.defaultdict(collections.Counter)  # label -> state -> n
    wchans = collections.defaultdict(collections.Counter)  # (label, state) -> wchan -> n
    names = {}
    end = time.monotonic() + seconds
    period = 1.0 / hz
    n_samples = 0
    while time.monotonic() < end:  # bounded by SECONDS
        t0 = time.monotonic()
        for pid in pids:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                key = (pid, tid)
                if key not in names:
                    names[key] = label(pid, tid)
                name = names[key]
                if name is None:
                    continue
                try:
                    with open(f"/proc/{pid}/task/{tid}/stat") as f:
                        stat = f.read()
                    with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                        wchan = f.read().strip() or "0"
                except OSError:
                    continue
                state = stat[stat.rindex(")") + 2]
                counts[name][state] += 1
                wchans[(name, state)][wchan] += 1
        n_samples += 1
        time.sleep(max(0.0, period - (time.monotonic() - t0)))
    with open(tids_out, "w") as f:
        f.write("".join(f"{tid}\t{n}\n" for (_, tid), n in names.items() if n))
    print(f"  thread states, {n_samples} samples over {seconds} s (R run, S sleep, D disk wait):")
    worker = None
    asleep = []
    for name in sorted(counts, key=lambda n: -sum(counts[n].values())):
        c = counts[name]
        total = sum(c.values())
        r, s, d = (c[x] / total for x in "RSD")
        is_worker = name == "worker-0" or "worker process" in name
        if r + d < 0.005 and not is_worker:
            asleep.append(name)
            continue
        top = []
        for st in "DS":
            w = wchans[(name, st)]
            if w:
                wc, wn = w.most_common(1)[0]
                top.append(f"{st}: {wc} {100 * wn / sum(w.values()):.0f}%")
        print(f"    {name:<24} R {100 * r:5.1f}%  S {100 * s:5.1f}%  D {100 * d:5.1f}%   {'; '.join(top)}")
        if worker is None and is_worker:
            worker = (r, s, d)
    if asleep:
        names = sorted({re.sub(r"-\d+$", "-N", n) for n in asleep})
        print(f"    ({len(asleep)} more threads asleep throughout: {', '.join(names)})")
    if worker:
        print("worker %.3f %.3f %.3f" % worker)


SKIP = re.compile(r"^(__schedule|schedule|io_schedule|schedule_timeout|io_schedule_timeout|"
                  r"schedule_hrtimeout_range|schedule_hrtimeout_range_clock|"
                  r"preempt_schedule\w*|__cond_resched|\w*_common_interrupt|asm_\w+_interrupt)$")
EVENT = re.compile(r"\s(\d+\.\d+):\s+sched:sched_switch:.*?prev_pid=(\d+) .*?prev_state=(\S+) "
                   r"==> .*?next_pid=(\d+)")


def signature(frames):
    """first two frames that are not the scheduler, the kernel function a fault hit, the syscall."""
    syms = [f for f in frames if not SKIP.match(f)]
    sig = syms[:2]
    for i, f in enumerate(syms):
        if f == "asm_exc_page_fault":
            sig.append("fault from " + (syms[i + 1] if i + 1 < len(syms) else "user space"))
            break
    for i, f in enumerate(syms):
        if f == "do_syscall_64" and i > 0:
            sig.append(syms[i - 1])
            break
    seen = []
    for s in sig:
        if s not in seen:
            seen.append(s)
    return " < ".join(seen)


def offcpu(tids_file, seconds):
    tids = {}
    with open(tids_file) as f:
        for line in f:
            tid, name = line.rstrip("\n").split("\t", 1)
            tids[int(tid)] = name
    out = {}  # tid -> (time switched out, state, stack signature)
    by = collections.Counter()  # (thread name, state, signature) -> seconds
    totals = collections.defaultdict(collections.Counter)  # thread name -> state -> seconds
    ev = None
    frames = []

    def finish():
        if ev is None:
            return
        t, prev, state, nxt = ev
        if prev in tids:
            out[prev] = (t, state[0], signature(frames))
        if nxt in tids and nxt in out:
            t0, st, sig = out.pop(nxt)
            by[(tids[nxt], st, sig)] += t - t0
            totals[tids[nxt]][st] += t - t0

    for line in sys.stdin:
        m = EVENT.search(line)
        if m:
            finish()
            ev = (float(m.group(1)), int(m.group(2)), m.group(3), int(m.group(4)))
            frames = []
        elif "[kernel.kallsyms]" in line:
            parts = line.split()
            if len(parts) >= 2:
                frames.append(parts[1].split("+")[0])
    finish()
    print(f"  off-CPU seconds over {seconds} s by thread and state (D disk wait, S sleep, R preempted),"
          " from perf sched_switch:")
    for name in sorted(totals, key=lambda n: -totals[n]["D"] - totals[n]["R"])[:4]:
        t = totals[name]
        print(f"    {name:<24} " + "  ".join(f"{st} {t[st]:6.2f}" for st in "DSR"))
    print("  top kernel stacks off CPU (seconds, thread, state, stack: waits < ... < syscall):")
    top = [k for k in by if k[1] == "D"]
    top.sort(key=lambda k: -by[k])
    busiest = max(totals, key=lambda n: totals[n]["D"] + totals[n]["R"], default=None)
    rest = [k for k in by if k[1] != "D" and (k[0] == busiest or "worker" in k[0])]
    rest.sort(key=lambda k: -by[k])
    for k in top[:6] + rest[:3]:
        print(f"    {by[k]:7.2f} s  {k[0]} {k[1]}  {k[2]}")


if __name__ == "__main__":
    if sys.argv[1] == "states":
        states(sys.argv[2], float(sys.argv[3]), sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 100)
    elif sys.argv[1] == "offcpu":
        offcpu(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(__doc__)
