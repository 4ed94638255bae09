#!/usr/bin/env python3
"""Concurrent GETs to masqd's API over its Unix socket, for benchmarks/control-api.sh.

  httpload.py --socket PATH --uri /v1/status [--clients 50] [--rounds 4] [--timeout 30]

Each of the clients sends its requests one after another, a connection each (as Prometheus
scrapes and curl scripts do), all clients at once. Prints "p50 MS p99 MS failed N" (nearest
rank, milliseconds): the time from connecting to the whole answer. A request fails when the
answer is not a 200 with its whole body within --timeout seconds. One process, the standard
library only: the clients cost the two CPUs they share with masqd far less than a debug build of
the Swift test client does.
"""
import argparse
import asyncio
import math
import sys
import time


async def get(path, uri, timeout):
    """One request; (seconds, whole 200 answer)."""
    start = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    try:
        writer.write(("GET %s HTTP/1.1\r\nHost: masqd\r\nConnection: close\r\n\r\n" % uri).encode())
        data = await asyncio.wait_for(reader.read(), timeout)  # until masqd closes
    finally:
        writer.close()
    took = time.perf_counter() - start
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not sep or not lines[0].startswith(b"HTTP/1.1 200"):
        return took, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return took, int(value) == len(body)
    return took, False


async def client(path, uri, rounds, timeout, latencies):
    failed = 0
    for _ in range(rounds):
        try:
            took, ok = await get(path, uri, timeout)
        except (OSError, asyncio.TimeoutError, ValueError):
            ok = False
        if ok:
            latencies.append(took)
        else:
            failed += 1
    return failed


def quantile_ms(values, q):
    if not values:
        return "-"
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return "%.1f" % (ordered[rank] * 1000)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--uri", required=True)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    latencies = []
    failures = await asyncio.gather(*(client(args.socket, args.uri, args.rounds, args.timeout, latencies)
                                      for _ in range(args.clients)))
    print("p50 %s p99 %s failed %d" % (quantile_ms(latencies, 0.5), quantile_ms(latencies, 0.99), sum(failures)))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
