#!/usr/bin/env python3
"""tools/bench's helper: reads fio's JSON output and the run records tools/bench wrote,
prints the tables and the issue 6, 13 and 14 targets, and writes the results JSON.

  bench-report.py brief FIO_JSON JOB      one line for the progress log
  bench-report.py report --runs F --rss F --out F ...   the tables and the JSON
  bench-report.py markdown RESULTS_JSON   a README table from a results file
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

JOBS = ["randread4k", "randwrite4k", "seqread1m", "seqwrite1m", "lat4k"]
THROUGHPUT_JOBS = ["randread4k", "randwrite4k", "seqread1m", "seqwrite1m"]
SUBJECTS = ["raw", "loop", "passthrough-ll", "udm-linear", "udm-linear-loop", "udm-striped", "udm-linear-uring", "udm-striped-uring", "udm-snap",
            "udm-snap-fw", "udm-snap-fw-sparse", "qsd", "qsd-loop", "qsd-qcow2-fw"]
DESCRIPTION = {
    "raw": "the image file itself (the limit)",
    "loop": "kernel loop device over the image (--direct-io=on)",
    "passthrough-ll": "libfuse's C example passthrough_ll over the image's directory (the FUSE floor; O_DIRECT writes copied to an aligned buffer by tools/passthrough-ll-odirect.c)",
    "udm-linear": "udm linear disk over the image",
    "udm-linear-loop": "loop device (--direct-io=on) over the udm linear disk's file",
    "udm-striped": "udm striped disk over two images",
    "udm-linear-uring": "udm linear disk, second daemon on the io_uring FUSE transport",
    "udm-striped-uring": "udm striped disk, second daemon on the io_uring FUSE transport",
    "udm-snap": "udm snapshot-origin with one snapshot, steady state (every chunk copied once)",
    "udm-snap-fw": "udm snapshot-origin, fresh snapshot per run (first writes copy chunks), preallocated COW file",
    "udm-snap-fw-sparse": "the same with a sparse COW file (each first copy allocates file-system blocks)",
    "qsd": "qemu-storage-daemon FUSE export of the image (driver=file, cache.direct=on)",
    "qsd-loop": "loop device (--direct-io=on) over the qsd export",
    "qsd-qcow2-fw": "qsd FUSE export of a fresh qcow2 overlay over the image (per run)",
}
# (numerator, denominator, jobs, at least, what)
TARGETS = [
    ("udm-linear", "raw", ["randread4k"], 0.5, "udm linear 4k randread >= 0.5x raw"),
    ("udm-linear", "raw", ["randwrite4k"], 0.7, "udm linear 4k randwrite >= 0.7x raw"),
    ("udm-linear", "raw", ["seqread1m", "seqwrite1m"], 0.7, "udm linear 1M sequential >= 0.7x raw"),
    ("udm-linear", "qsd", THROUGHPUT_JOBS, 1.5, "udm linear >= 1.5x qsd FUSE export"),
    ("udm-striped", "udm-linear", THROUGHPUT_JOBS, 0.95, "striped (2 images) >= 0.95x linear"),
    ("udm-snap", "udm-linear", THROUGHPUT_JOBS, 0.9, "snapshot steady state >= 0.9x linear"),
    ("udm-snap-fw", "qsd-qcow2-fw", ["randwrite4k"], 2.0, "snapshot first-write randwrite >= 2x qcow2 overlay"),
    ("udm-snap-fw-sparse", "qsd-qcow2-fw", ["randwrite4k"], 2.0, "(info) sparse COW first-write vs qcow2 overlay"),
    ("udm-linear-loop", "udm-linear", THROUGHPUT_JOBS, 0.9, "udm through a loop device >= 0.9x without"),
    ("udm-linear-uring", "udm-linear", ["randread4k", "randwrite4k"], 1.3, "uring transport 4k >= 1.3x legacy (linear)"),
    ("udm-striped-uring", "udm-striped", ["randread4k", "randwrite4k"], 1.3, "uring transport 4k >= 1.3x legacy (striped)"),
    ("udm-linear-uring", "raw", ["randread4k", "randwrite4k"], 0.6, "uring transport linear 4k >= 0.6x raw"),
    ("qsd-loop", "qsd", THROUGHPUT_JOBS, 0.9, "(peer) qsd through a loop device vs without"),
    ("udm-linear", "passthrough-ll", ["randread4k", "randwrite4k"], 1.0, "udm linear 4k >= 1.0x passthrough_ll"),
    ("udm-linear-uring", "passthrough-ll", ["randread4k", "randwrite4k"], 1.0, "(info) uring linear 4k vs passthrough_ll"),
]
# (subject, jobs, at most, what): daemon voluntary context switches per I/O (2 jobs x iodepth 8)
VCSW_TARGETS = [
    ("udm-linear", ["randread4k", "randwrite4k"], 1.0, "udm linear <= 1 voluntary switch per 4k I/O, iodepth 16"),
    ("udm-linear-uring", ["randread4k", "randwrite4k"], 1.0, "(info) uring linear switches per 4k I/O"),
    ("passthrough-ll", ["randread4k", "randwrite4k"], 1.0, "(info) passthrough_ll switches per 4k I/O"),
]
MiB = 1024 * 1024
GiB = 1024 * MiB


def load_fio(path):
    with open(path) as f:
        text = f.read()
    # fio may print notes before the JSON object
    return json.loads(text[text.index("{"):])


def fio_numbers(path):
    """Sums over fio's job entries: IOPS, bytes/s, bytes moved; clat percentiles (µs)."""
    d = load_fio(path)
    out = {"iops": 0.0, "bw_bytes": 0.0, "io_bytes": 0, "ios": 0, "runtime_ms": 0, "errors": 0}
    p50 = p99 = p999 = mean = None
    for j in d["jobs"]:
        out["errors"] += j.get("error", 0)
        out["runtime_ms"] = max(out["runtime_ms"], max(j["read"]["runtime"], j["write"]["runtime"]))
        for side in ("read", "write"):
            s = j[side]
            out["iops"] += s["iops"]
            out["bw_bytes"] += s["bw_bytes"]
            out["io_bytes"] += s["io_bytes"]
            out["ios"] += s.get("total_ios", 0)
            pct = s.get("clat_ns", {}).get("percentile")
            if s["io_bytes"] and pct and p50 is None:
                p50 = pct.get("50.000000", 0) / 1000
                p99 = pct.get("99.000000", 0) / 1000
                p999 = pct.get("99.900000", 0) / 1000
                mean = s["clat_ns"]["mean"] / 1000
    out.update(clat_p50_us=p50, clat_p99_us=p99, clat_p999_us=p999, clat_mean_us=mean)
    return out


def metric(job, n):
    """The headline number of a job: IOPS for 4k, MiB/s for 1M."""
    return n["bw_bytes"] / MiB if job.startswith("seq") else n["iops"]


def fmt_value(job, v):
    if v is None:
        return "-"
    if job.startswith("seq"):
        return f"{v:.0f} MiB/s"
    return f"{v / 1000:.1f}k" if v >= 10000 else f"{v:.0f}"


def brief(path, job):
    n = fio_numbers(path)
    if job == "lat4k":
        return f"{n['iops']:.0f} IOPS, clat p50 {n['clat_p50_us']:.0f} us, p99 {n['clat_p99_us']:.0f} us"
    if job == "rss":
        return f"{n['iops']:.0f} IOPS"
    if job.startswith("seq"):
        return f"{n['bw_bytes'] / MiB:.0f} MiB/s"
    return f"{n['iops']:.0f} IOPS"


def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def cmd_out(args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return ""


def machine():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    debian = ""
    try:
        debian = open("/etc/debian_version").read().strip()
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem / GiB, 1),
            "kernel": platform.release(), "debian": debian,
            "loadavg_at_end": open("/proc/loadavg").read().split()[:3]}


def report(a):
    runs = []
    with open(a.runs) as f:
        for line in f:
            if line.strip():
                runs.append(json.loads(line))
    for r in runs:
        r.update(fio_numbers(r["fio"]))
        r["value"] = metric(r["job"], r)
        secs = r.pop("cpu_ticks") / a.clk_tck
        r["daemon_cpu_s"] = secs if r["daemon"] else None
        r["daemon_cpu_s_per_gib"] = secs / (r["io_bytes"] / GiB) if r["daemon"] and r["io_bytes"] else None
        switches = r.pop("vcsw", None)
        r["daemon_vcsw_per_io"] = switches / r["ios"] if r["daemon"] and switches is not None and r["ios"] else None
        del r["fio"]
    by = {(r["pass"], r["job"], r["subject"]): r for r in runs}
    passes = sorted({r["pass"] for r in runs})
    subjects = [s for s in SUBJECTS if any(r["subject"] == s for r in runs)]
    jobs = [j for j in JOBS if any(r["job"] == j for r in runs)]

    def ratio(p, job, num, den):
        a_, b_ = by.get((p, job, num)), by.get((p, job, den))
        if not a_ or not b_ or not b_["value"]:
            return None
        return a_["value"] / b_["value"]

    for r in runs:
        r["ratio_to_raw"] = ratio(r["pass"], r["job"], r["subject"], "raw")

    summary = {}
    for s in subjects:
        for j in jobs:
            rs = [by[(p, j, s)] for p in passes if (p, j, s) in by]
            if not rs:
                continue
            ratios = [r["ratio_to_raw"] for r in rs if r["ratio_to_raw"] is not None]
            summary.setdefault(s, {})[j] = {
                "value": mean(r["value"] for r in rs),
                "unit": "MiB/s" if j.startswith("seq") else "IOPS",
                "ratio_to_raw": mean(ratios),
                "ratio_to_raw_per_pass": ratios,
                "clat_p50_us": mean(r["clat_p50_us"] for r in rs),
                "clat_p99_us": mean(r["clat_p99_us"] for r in rs),
                "daemon_cpu_s_per_gib": mean(r["daemon_cpu_s_per_gib"] for r in rs),
                "daemon_vcsw_per_io": mean(r["daemon_vcsw_per_io"] for r in rs),
            }

    targets = []
    for num, den, tjobs, least, what in TARGETS:
        for j in tjobs:
            per = [ratio(p, j, num, den) for p in passes]
            per = [x for x in per if x is not None]
            if not per:
                continue
            m = mean(per)
            targets.append({"target": what, "job": j, "numerator": num, "denominator": den,
                            "at_least": least, "ratio": m, "ratio_per_pass": per,
                            "met": m >= least})

    for s, tjobs, most, what in VCSW_TARGETS:
        for j in tjobs:
            per = [by[(p, j, s)]["daemon_vcsw_per_io"] for p in passes if (p, j, s) in by]
            per = [x for x in per if x is not None]
            if per:
                m = mean(per)
                targets.append({"target": what, "job": j, "numerator": f"{s} voluntary switches",
                                "denominator": "fio I/Os", "at_most": most, "ratio": m,
                                "ratio_per_pass": per, "met": m <= most})

    held = []
    if a.held and os.path.exists(a.held):
        with open(a.held) as f:
            held = [json.loads(line) for line in f if line.strip()]

    rss = []
    if a.rss and os.path.exists(a.rss):
        with open(a.rss) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    r["iops"] = fio_numbers(r.pop("fio"))["iops"]
                    rss.append(r)
    if len(rss) >= 2:
        first, last = rss[0], rss[-1]
        g = last["vmhwm_kib"] / first["vmhwm_kib"] if first["vmhwm_kib"] else None
        targets.append({"target": f"peak RSS at iodepth {last['depth']} within 10% of iodepth {first['depth']}",
                        "job": "rss", "numerator": f"VmHWM qd{last['depth']}",
                        "denominator": f"VmHWM qd{first['depth']}", "at_most": 1.10, "ratio": g,
                        "met": g is not None and g <= 1.10})

    notes = []
    if a.notes and os.path.exists(a.notes):
        notes = [l.rstrip("\n") for l in open(a.notes) if l.strip()]
    now = datetime.datetime.now()
    result = {
        "date": now.isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": {
            "udm": cmd_out(["git", "-C", a.repo, "describe", "--always", "--dirty"]),
            "fio": cmd_out(["fio", "--version"]),
            "qemu-storage-daemon": cmd_out([a.qsd, "--version"]).splitlines()[0] if a.qsd else "",
        },
        "settings": {"runtime_s": a.runtime, "passes": a.passes, "image_size": a.size,
                     "quick": bool(a.quick), "stripe_chunk_sectors": a.stripe_chunk,
                     "snapshot_chunk_sectors": a.snap_chunk,
                     "fio": "--ioengine=libaio --direct=1 --time_based --norandommap --randrepeat=0"},
        "total_seconds": a.total_seconds,
        "subjects": {s: DESCRIPTION[s] for s in subjects},
        "notes": notes,
        "summary": summary,
        "targets": targets,
        "rss": rss,
        "held_1m_writes": held,
        "runs": runs,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print_tables(result, subjects, jobs)


def print_tables(res, subjects, jobs):
    m = res["machine"]
    st = res["settings"]
    print(f"udm bench {res['date']} on {m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB, "
          f"Debian {m['debian']}, Linux {m['kernel']}")
    print(f"{st['passes']} pass(es) x {st['runtime_s']} s per job, {st['image_size']} image, "
          f"striped chunk {st['stripe_chunk_sectors']} sectors, snapshot chunk {st['snapshot_chunk_sectors']} "
          f"sectors; udm {res['versions']['udm']}")
    for n in res["notes"]:
        print(f"  {n}")
    print()
    summ = res["summary"]
    tjobs = [j for j in jobs if j != "lat4k"]
    if tjobs:
        print("throughput, mean of passes (x raw = ratio to the raw image within a pass, averaged)")
        w = 22
        print(f"{'subject':<16}" + "".join(f"{j:>{w}}" for j in tjobs))
        for s in subjects:
            cells = []
            for j in tjobs:
                c = summ.get(s, {}).get(j)
                if not c:
                    cells.append(f"{'':>{w}}")
                    continue
                rr = "" if c["ratio_to_raw"] is None else f"{c['ratio_to_raw']:.2f}x"
                cells.append(f"{fmt_value(j, c['value']) + '  ' + rr:>{w}}")
            print(f"{s:<16}" + "".join(cells))
        print()
    if "lat4k" in jobs:
        print("latency, 4k randread at iodepth 1 (fio clat, microseconds)")
        print(f"{'subject':<16}{'p50':>8}{'p99':>8}{'IOPS':>9}{'x raw':>8}")
        for s in subjects:
            c = summ.get(s, {}).get("lat4k")
            if c:
                rr = "" if c["ratio_to_raw"] is None else f"{c['ratio_to_raw']:.2f}x"
                print(f"{s:<16}{c['clat_p50_us']:>8.0f}{c['clat_p99_us']:>8.0f}{c['value']:>9.0f}{rr:>8}")
        print()
    def daemon_table(key, title):
        """A subject x job table of one per-daemon figure, for the subjects that have it."""
        rows = [s for s in subjects if any(c.get(key) is not None for c in summ.get(s, {}).values())]
        if not rows:
            return
        print(title)
        print(f"{'subject':<16}" + "".join(f"{j:>13}" for j in jobs))
        for s in rows:
            cells = []
            for j in jobs:
                v = (summ.get(s, {}).get(j) or {}).get(key)
                cells.append(f"{'' if v is None else f'{v:.2f}':>13}")
            print(f"{s:<16}" + "".join(cells))
        print()

    daemon_table("daemon_cpu_s_per_gib",
                 "daemon CPU seconds per GiB moved (utime+stime of the udm or qsd process / fio io_bytes)")
    if res["rss"]:
        print("udm daemon memory, striped disk, 4k randread+randwrite (fresh daemon per depth)")
        print(f"{'iodepth':>8}{'idle RSS':>12}{'VmHWM':>12}{'sampled max':>13}{'IOPS':>9}")
        for r in res["rss"]:
            print(f"{r['depth']:>8}{r['idle_rss_kib'] / 1024:>8.1f} MiB{r['vmhwm_kib'] / 1024:>8.1f} MiB"
                  f"{r['sampled_max_rss_kib'] / 1024:>9.1f} MiB{r['iops']:>9.0f}")
        print()
    daemon_table("daemon_vcsw_per_io", "daemon voluntary context switches per I/O "
                 "(perf: sched_switch while blocked, all its threads, also those that come and go)")
    if res.get("held_1m_writes"):
        print("udm daemon memory, 8 suspended disks each sent a full queue of 1 MiB writes (fresh daemon)")
        print(f"{'transport':<10}{'held':>7}{'idle RSS':>12}{'held RSS':>12}{'VmHWM':>12}{'RSS after':>12}")
        for h in res["held_1m_writes"]:
            print(f"{h['transport']:<10}{h['held']:>7}{h['idle_rss_kib'] / 1024:>8.1f} MiB{h['held_rss_kib'] / 1024:>8.1f} MiB"
                  f"{h['vmhwm_kib'] / 1024:>8.1f} MiB{h['rss_after_kib'] / 1024:>8.1f} MiB")
        print()
    if res["targets"]:
        print("targets (ratios within a pass, averaged; benchmarks, not tests)")
        for t in res["targets"]:
            bound = f">= {t['at_least']}" if "at_least" in t else f"<= {t['at_most']}"
            per = ""
            if t.get("ratio_per_pass") and len(t["ratio_per_pass"]) > 1:
                per = " (passes: " + ", ".join(f"{x:.2f}" for x in t["ratio_per_pass"]) + ")"
            r = "-" if t["ratio"] is None else f"{t['ratio']:.2f}"
            verdict = "met" if t["met"] else "MISSED"
            if t["target"].startswith(("(peer)", "(info)")):
                verdict = "info"
            print(f"  {verdict:<7}{t['target']:<60}{t['job']:<12}{r:>6} {bound}{per}")
        print()
    print(f"total {res['total_seconds']} s")


def markdown(path):
    """A README-ready table from a results file."""
    res = json.load(open(path))
    summ = res["summary"]
    subjects = [s for s in SUBJECTS if s in summ]
    jobs = [j for j in JOBS if any(j in summ[s] for s in subjects)]
    tjobs = [j for j in jobs if j != "lat4k"]
    head = ["subject"] + [f"{j} (x raw)" for j in tjobs]
    if "lat4k" in jobs:
        head.append("lat4k p50 / p99 µs")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for s in subjects:
        row = [s]
        for j in tjobs:
            c = summ[s].get(j)
            if not c:
                row.append("")
                continue
            r = "" if c["ratio_to_raw"] is None else f" ({c['ratio_to_raw']:.2f})"
            row.append(fmt_value(j, c["value"]) + r)
        if "lat4k" in jobs:
            c = summ[s].get("lat4k")
            row.append(f"{c['clat_p50_us']:.0f} / {c['clat_p99_us']:.0f}" if c else "")
        print("| " + " | ".join(row) + " |")
    cpu = [(s, summ[s]) for s in subjects if s in ("udm-linear", "qsd")]
    if cpu:
        print()
        print("Daemon CPU s/GiB (randread4k, randwrite4k, seqread1m, seqwrite1m): " + "; ".join(
            f"{s} " + ", ".join("-" if not c.get(j) or c[j]["daemon_cpu_s_per_gib"] is None
                                 else f"{c[j]['daemon_cpu_s_per_gib']:.2f}" for j in THROUGHPUT_JOBS)
            for s, c in cpu) + ".")
    vcsw = [(s, summ[s]) for s in subjects if s in ("udm-linear", "udm-linear-uring", "passthrough-ll")]
    if any(c.get(j) and c[j].get("daemon_vcsw_per_io") is not None for _, c in vcsw for j in ("randread4k", "randwrite4k")):
        print("Daemon voluntary context switches per 4k I/O (randread4k, randwrite4k): " + "; ".join(
            f"{s} " + ", ".join("-" if not c.get(j) or c[j].get("daemon_vcsw_per_io") is None
                                 else f"{c[j]['daemon_vcsw_per_io']:.2f}" for j in ("randread4k", "randwrite4k"))
            for s, c in vcsw) + ".")
    if res.get("held_1m_writes"):
        print("8 suspended disks, each sent 128 writes of 1 MiB: " + "; ".join(
            f"{h['transport']}: {h['held']} held, VmHWM {h['vmhwm_kib'] / 1024:.0f} MiB, {h['rss_after_kib'] / 1024:.0f} MiB once they landed"
            for h in res["held_1m_writes"]) + ".")
    if res["rss"]:
        print("Peak RSS (VmHWM) of a fresh daemon, striped disk, 4k randread+randwrite: " + ", ".join(
            f"iodepth {r['depth']} {r['vmhwm_kib'] / 1024:.1f} MiB" for r in res["rss"]) + ".")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "markdown":
        markdown(sys.argv[2])
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "brief":
        try:
            print(brief(sys.argv[2], sys.argv[3]))
        except Exception as e:  # a progress line must never stop the run
            print(f"(unreadable fio output: {e})")
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["report"])
    ap.add_argument("--runs", required=True)
    ap.add_argument("--rss")
    ap.add_argument("--held")
    ap.add_argument("--notes")
    ap.add_argument("--out", required=True)
    ap.add_argument("--clk-tck", type=int, default=100)
    ap.add_argument("--runtime", type=int)
    ap.add_argument("--passes", type=int)
    ap.add_argument("--size")
    ap.add_argument("--quick", type=int, default=0)
    ap.add_argument("--stripe-chunk", type=int)
    ap.add_argument("--snap-chunk", type=int)
    ap.add_argument("--total-seconds", type=int)
    ap.add_argument("--udm")
    ap.add_argument("--qsd")
    ap.add_argument("--repo", default=".")
    report(ap.parse_args())


if __name__ == "__main__":
    main()
