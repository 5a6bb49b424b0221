"""pyasic side of scripts/bench-miner-sweep: identify, then read, every miner of a fleet.

Usage: bench-pyasic-sweep.py --fleet FILE [--fleet FILE] [--count N] [--hung FILE] [--sweeps K]
                             [--label NAME]

Reads `pivot-sim miners` output lines, takes each line's IP (pyasic only knows default ports, so
the fleet runs in --ip-range mode), and times:
  identify: asyncio.gather(pyasic.get_miner(ip) for every ip), --identify-concurrency at a time
  data:     asyncio.gather(miner.get_data() for every identified miner), K times
with CPU time and peak RSS from getrusage(RUSAGE_SELF) and TCP connections from the delta of
`Tcp: ActiveOpens` in /proc/net/snmp (the script runs in a private network namespace, so every
connection counted is this process's). Prints one `RESULT {json}` line.
"""

import argparse
import asyncio
import json
import resource
import sys
import time

import pyasic


def active_opens() -> int:
    with open("/proc/net/snmp") as f:
        tcp = [line.split() for line in f if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("ActiveOpens")])


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ips(files: list[str]) -> list[str]:
    out = []
    for path in files:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    out.append(parts[1].rsplit(":", 1)[0])
    return out


async def get_data(miner):
    try:
        await miner.get_data()
        return None
    except Exception as e:  # noqa: BLE001 - counted and reported
        return f"{type(miner).__name__}: {type(e).__name__}"


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fleet", action="append", required=True)
    p.add_argument("--hung", action="append", default=[])
    p.add_argument("--count", type=int)
    p.add_argument("--sweeps", type=int, default=2)
    p.add_argument("--label", default="pyasic")
    p.add_argument("--identify-concurrency", type=int, default=250)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    healthy, hung = ips(a.fleet), ips(a.hung)
    count = a.count or len(healthy) + len(hung)
    targets = healthy[: count - len(hung)] + hung

    opens, cpu, t = active_opens(), cpu_s(), time.monotonic()
    # Identification is bounded: an unbounded gather of 5,000 get_miner() on 2 cores starves the
    # event loop so that every probe passes pyasic's own 3 s timeout and nothing is found.
    gate = asyncio.Semaphore(a.identify_concurrency)

    async def identify_one(ip):
        async with gate:
            return await pyasic.get_miner(ip)

    miners = await asyncio.gather(*(identify_one(ip) for ip in targets))
    identify = {
        "wall_s": time.monotonic() - t,
        "cpu_s": cpu_s() - cpu,
        "connections": active_opens() - opens,
        "found": sum(m is not None for m in miners),
    }
    print(f"{a.label}: identify {identify}", file=sys.stderr, flush=True)
    found = [m for m in miners if m is not None]
    kinds = {}
    for m in found:
        kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1

    sweeps = []
    for i in range(a.sweeps):
        opens, cpu, t = active_opens(), cpu_s(), time.monotonic()
        errors = await asyncio.gather(*(get_data(m) for m in found))
        wall, conns = time.monotonic() - t, active_opens() - opens
        s = {
            "wall_s": wall,
            "cpu_s": cpu_s() - cpu,
            "connections": conns,
            "conns_per_miner": conns / max(len(found), 1),
            "errors": {e: errors.count(e) for e in sorted(set(errors) - {None})},
        }
        print(f"{a.label}: data sweep {i}: {s}", file=sys.stderr, flush=True)
        sweeps.append(s)
    result = {
        "label": a.label,
        "miners": len(targets),
        "hung": len(hung),
        "classes": kinds,
        "identify": identify,
        "identify_concurrency": a.identify_concurrency,
        "sweeps": sweeps,
        "cpu_total_s": cpu_s(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pyasic": getattr(pyasic, "__version__", "?"),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
