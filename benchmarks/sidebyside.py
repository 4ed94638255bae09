#!/usr/bin/env python3
"""Helpers for benchmarks/sidebyside.sh (Python standard library only; every loop is bounded).

  serve    --port P [--lifetime S]   TCP request/reply server, one connection at a time: reads
           the request, answers "ok", closes first (HTTP/1.0 style, so the TIME_WAIT is here)
  crr      --dst IP:PORT --seconds S   connect, request, reply, close, back to back for S
           seconds; prints "CONNS_PER_SECOND COMPLETED FAILED"
  iperf    tcp | udp --delivered N   reads `iperf3 -J` on stdin; prints the TCP bits/s at the
           receiver, or N (the packets the outside device received during the test) per second
           of the test
  progstats --ids ID,.. [--timeout S]   turns the kernel's BPF run-time statistics on
           (BPF_ENABLE_STATS, only while this process holds the fd), prints "ready", and waits
           for a line on stdin (or S seconds); then prints, for each program id, "NAME
           NS_PER_RUN RUNS" over that time, and "share PERCENT": the programs' run time as a
           share of one CPU's time meanwhile
  summary  --baseline MODE --modes A,B,..   reads "mode metric rep value" lines on stdin; prints
           the medians and their ratios to the baseline as a markdown table, then the median
           of the per-repetition ratios
"""
import argparse
import ctypes
import json
import math
import os
import subprocess
import select
import socket
import statistics
import sys
import time

IO_TIMEOUT = 2.0


def hostport(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def cmd_serve(args):
    deadline = time.monotonic() + args.lifetime
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", args.port))
    listener.listen(1024)
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([listener], [], [], min(left, 1.0))[0]:
            continue
        conn, _ = listener.accept()
        conn.settimeout(IO_TIMEOUT)
        try:
            if conn.recv(64):
                conn.sendall(b"ok\n")
        except OSError:
            pass
        finally:
            conn.close()
    return 0


def cmd_crr(args):
    dst = hostport(args.dst)
    completed = failed = 0
    start = time.monotonic()
    deadline = start + args.seconds
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(IO_TIMEOUT)
        try:
            s.connect(dst)
            s.sendall(b"req\n")
            answer = b""
            while chunk := s.recv(64):  # until the server's FIN
                answer += chunk
            if answer == b"ok\n":
                completed += 1
            else:
                failed += 1
        except OSError:
            failed += 1
        finally:
            s.close()
    elapsed = time.monotonic() - start
    print("%.1f %d %d" % (completed / elapsed, completed, failed))
    return 0


def cmd_iperf(args):
    report = json.load(sys.stdin)
    if "error" in report:
        print("iperf3: %s" % report["error"], file=sys.stderr)
        return 1
    end = report["end"]
    if args.kind == "tcp":
        print("%.0f" % end["sum_received"]["bits_per_second"])
    else:
        print("%.0f" % (args.delivered / end["sum_sent"]["seconds"]))
    return 0


METRICS = [
    ("tcp", "TCP throughput", lambda v: "%.2f Gbit/s" % (v / 1e9)),
    ("udp", "UDP 64-byte packets/s", lambda v: "%.0f k" % (v / 1e3)),
    ("crr", "TCP connect/request/reply/close per second", lambda v: "%.0f" % v),
]


def cmd_summary(args):
    samples = {}
    for line in sys.stdin:
        fields = line.split()
        if len(fields) == 4:
            mode, metric, rep, value = fields
            samples.setdefault((mode, metric), {})[rep] = float(value)
    modes = args.modes.split(",")
    measured = [m for m in METRICS if any(metric == m[0] for _, metric in samples)]

    def table(cell):
        """One row per metric, one cell per mode (`cell(mode, metric, fmt)`)."""
        print("| metric | " + " | ".join(modes) + " |")
        print("|---" * (len(modes) + 1) + "|")
        for metric, title, fmt in measured:
            print("| %s | %s |" % (title, " | ".join(cell(m, metric, fmt) for m in modes)))

    def paired(m, metric):
        """Each repetition's sample of mode m over the baseline's sample of the same repetition."""
        base = samples.get((args.baseline, metric), {})
        return [v / base[rep] for rep, v in samples.get((m, metric), {}).items() if base.get(rep)]

    def median_cell(m, metric, fmt):
        if (m, metric) not in samples:
            return "-"
        value = statistics.median(samples[(m, metric)].values())
        base = samples.get((args.baseline, metric))
        return "%.2f (%s)" % (value / statistics.median(base.values()), fmt(value)) if base else fmt(value)

    def paired_median_cell(m, metric, _):
        ratios = paired(m, metric)
        return "%.2f (%.2f-%.2f)" % (statistics.median(ratios), min(ratios), max(ratios)) if ratios else "-"

    def paired_interval_cell(m, metric, _):
        logs = [math.log(r) for r in paired(m, metric) if r > 0]
        if len(logs) < 3:
            return "-"
        mean = statistics.fmean(logs)
        half = T95.get(len(logs) - 1, 1.96) * statistics.stdev(logs) / math.sqrt(len(logs))
        return "%.3f (%.3f-%.3f)" % (math.exp(mean), math.exp(mean - half), math.exp(mean + half))

    table(median_cell)
    # The machine drifts over minutes; a mode's sample divided by the baseline's of the same
    # repetition (measured seconds apart) cancels most of that drift.
    print()
    print("Paired: the median of each repetition's ratio to %s (lowest-highest):" % args.baseline)
    print()
    table(paired_median_cell)
    # Single pairs spread widely on a VM; how far the typical ratio can be trusted is the
    # confidence interval of their mean (on log ratios, so 0.5 and 2 weigh alike).
    print()
    print("Paired, geometric mean with its 95% confidence interval (needs 3 repetitions or more):")
    print()
    table(paired_interval_cell)
    return 0


# Student's t, two-sided 95%, by degrees of freedom (1.96 beyond the table).
T95 = {2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 14: 2.145, 16: 2.120, 19: 2.093, 24: 2.064, 29: 2.045, 39: 2.023, 59: 2.001}
T95.update({df: T95[max(k for k in T95 if k <= df)] for df in range(2, 60)})


SYS_BPF = {"x86_64": 321, "aarch64": 280}  # bpf(2) by architecture
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0


def prog_stats(prog_id):
    out = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)], check=True,
                         capture_output=True, text=True, timeout=10).stdout
    info = json.loads(out)
    return info["name"], info.get("run_time_ns", 0), info.get("run_cnt", 0)


def cmd_progstats(args):
    number = SYS_BPF.get(os.uname().machine)
    if number is None:
        print("bpf(2): syscall number unknown on %s" % os.uname().machine, file=sys.stderr)
        return 1
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(BPF_STATS_RUN_TIME.to_bytes(4, "little"), 128)
    fd = libc.syscall(number, BPF_ENABLE_STATS, attr, 128)
    if fd < 0:
        print("BPF_ENABLE_STATS: %s" % os.strerror(ctypes.get_errno()), file=sys.stderr)
        return 1
    try:
        ids = [int(i) for i in args.ids.split(",")]
        before = {i: prog_stats(i) for i in ids}
        start = time.monotonic_ns()
        print("ready", flush=True)
        select.select([sys.stdin], [], [], args.timeout)
        wall = time.monotonic_ns() - start
        total = 0
        for i in ids:
            name, ns, runs = prog_stats(i)
            runs -= before[i][2]
            ns -= before[i][1]
            total += ns
            print("%s %.0f %d" % (name, ns / runs if runs else 0, runs))
        print("share %.2f" % (100.0 * total / wall), flush=True)
    finally:
        os.close(fd)
    return 0


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--lifetime", type=float, default=1800.0)
    p = sub.add_parser("crr")
    p.add_argument("--dst", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p = sub.add_parser("iperf")
    p.add_argument("kind", choices=["tcp", "udp"])
    p.add_argument("--delivered", type=int, default=0)
    p = sub.add_parser("progstats")
    p.add_argument("--ids", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("summary")
    p.add_argument("--baseline", required=True)
    p.add_argument("--modes", required=True)
    args = parser.parse_args()
    return {"serve": cmd_serve, "crr": cmd_crr, "iperf": cmd_iperf, "progstats": cmd_progstats,
            "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
