"""Markdown tables from the results of scripts/bench-miner-sweep and scripts/bench-agent.

Usage: bench-report.py miner-sweep RESULTS.jsonl TIMEOUT_MS
       bench-report.py agent RESULTS.jsonl
"""

import json
import statistics
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def med(sweeps, key):
    return statistics.median(s[key] for s in sweeps) if sweeps else float("nan")


def other_row(n, client, r, p, identify, fmt):
    """A client's row with its sweep time and CPU as ratios to pivot's in the same run."""
    ratio = med(r["sweeps"], "wall_s") / med(p["sweeps"], "wall_s") if p else float("nan")
    cpu_ratio = med(r["sweeps"], "cpu_s") / max(med(p["sweeps"], "cpu_s"), 0.01) if p else float("nan")
    print(f"| {n:,} | {client} | {med(r['sweeps'], 'wall_s'):.3f} | {med(r['sweeps'], 'cpu_s'):.2f} "
          f"| {med(r['sweeps'], 'conns_per_miner'):.2f} | {r['peak_rss_mib']:.0f} | {identify} "
          f"| {(fmt + '× (CPU ' + fmt + '×)') % (ratio, cpu_ratio) if p else '–'} |")


def miner_sweep(rows, timeout_ms):
    by = {r["label"]: r for r in rows}
    pivot_sizes = sorted({r["miners"] for r in rows if r["label"] == f"pivot {r['miners']}"})
    pyasic_sizes = sorted({r["miners"] for r in rows if r["label"] == f"pyasic {r['miners']}"})
    print("Healthy fleet, mixed dialects (median of the timed sweeps):\n")
    print("| miners | client | data sweep s | CPU s / sweep | TCP conns / miner / sweep | peak RSS MiB "
          "| identify s | client ÷ pivot (sweep time) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in sorted(set(pivot_sizes) | set(pyasic_sizes)):
        p, d, y = by.get(f"pivot {n}"), by.get(f"pivot {n} detect"), by.get(f"pyasic {n}")
        if p:
            ident = f"{d['discovery']['wall_s']:.2f}" if d else "–"
            print(f"| {n:,} | pivot | {med(p['sweeps'], 'wall_s'):.3f} | {med(p['sweeps'], 'cpu_s'):.2f} "
                  f"| {med(p['sweeps'], 'conns_per_miner'):.2f} | {p['peak_rss_mib']:.0f} | {ident} | |")
        if y:
            ratio = med(y["sweeps"], "wall_s") / med(p["sweeps"], "wall_s") if p else float("nan")
            cpu_ratio = med(y["sweeps"], "cpu_s") / max(med(p["sweeps"], "cpu_s"), 0.01) if p else float("nan")
            errs = "; ".join(f"{k} ×{v}" for k, v in y["sweeps"][0]["errors"].items()) if y["sweeps"] else ""
            print(f"| {n:,} | pyasic {y['pyasic']} | {med(y['sweeps'], 'wall_s'):.3f} | {med(y['sweeps'], 'cpu_s'):.2f} "
                  f"| {med(y['sweeps'], 'conns_per_miner'):.2f} | {y['peak_rss_mib']:.0f} | {y['identify']['wall_s']:.2f} "
                  f"| {'**%.0f×** (CPU %.0f×)' % (ratio, cpu_ratio) if p else '– (no pivot run of this size)'} |")
            if errs:
                print(f"|  | pyasic get_data() raised | {errs} | | | | | |")
        a, f = by.get(f"asic-rs {n}"), by.get(f"floor {n}")
        if a:
            other_row(n, f"asic-rs {a['asic_rs']} ({a['identified']:,} identified, "
                      f"{min(s['read'] for s in a['sweeps']):,} read a hashrate)", a, p,
                      f"{a['identify']['wall_s']:.2f}", "%.1f")
        if f:
            other_row(n, f"floor client (one cgminer request per miner; {f['sweeps'][0]['failures']:.0f} failed)",
                      f, p, "–", "%.2f")
    print("\nIdentify: pivot = `discover_miners` with `dialect = \"auto\"` (detect + identify); "
          "pyasic = `asyncio.gather(pyasic.get_miner(ip))`.\n")

    print("TCP connections per miner per sweep, by dialect (pivot; first sweep of the dialect alone, "
          "then the next one with HTTP keep-alive connections pooled):\n")
    print("| miners | " + " | ".join(sorted(by[f"pivot {pivot_sizes[-1]}"]["per_dialect"])) + " |")
    print("|---:|" + "---:|" * len(by[f"pivot {pivot_sizes[-1]}"]["per_dialect"]))
    for n in pivot_sizes:
        pd = by[f"pivot {n}"]["per_dialect"]
        if not pd:
            continue
        cells = [f"{pd[k]['conns_per_miner']:.2f} / {pd[k]['conns_per_miner_pooled']:.2f}" for k in sorted(pd)]
        print(f"| {n:,} | " + " | ".join(cells) + " |")

    print(f"\n10 % of the miners hung (accept, never answer); request timeout {timeout_ms} ms:\n")
    print("| miners | client | healthy sweep s | hung, daemon order s | hung, spread s | extra over healthy s | target ≤ 1 timeout |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for n in sorted({r["miners"] for r in rows if "hung" in r["label"]}):
        p, hs, hp = by.get(f"pivot {n}"), by.get(f"pivot {n} hung-sorted"), by.get(f"pivot {n} hung-spread")
        if p and hs:
            base = med(p["sweeps"], "wall_s")
            worst = max(med(hs["sweeps"], "wall_s"), med(hp["sweeps"], "wall_s") if hp else 0)
            extra = worst - base
            spread = f"{med(hp['sweeps'], 'wall_s'):.3f}" if hp else "–"
            print(f"| {n:,} | pivot | {base:.3f} | {med(hs['sweeps'], 'wall_s'):.3f} | {spread} | {extra:.2f} "
                  f"| {'met' if extra <= timeout_ms / 1000 else 'MISSED'} |")
        y, yh = by.get(f"pyasic {n}"), by.get(f"pyasic {n} hung")
        if y and yh:
            base = y["identify"]["wall_s"] + med(y["sweeps"], "wall_s")
            hung = yh["identify"]["wall_s"] + med(yh["sweeps"], "wall_s")
            print(f"| {n:,} | pyasic (identify + data sweep) | {base:.2f} | {hung:.2f} | – | {hung - base:.2f} | – |")


def agent(rows):
    print("| miners | controller | window s | agent CPU % of one core | peak RSS MiB (VmHWM) | RSS MiB at end "
          "| TCP conns / sweep | startup s | emulator CPU % | last sweep (from /metrics) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        m = {kv.split("{")[0].split(" ")[0]: kv.rsplit(" ", 1)[1] for kv in r["metrics"].split(";") if " " in kv}
        sweep = m.get("pivot_agent_sweep_duration_seconds", "?")
        total = m.get("pivot_agent_sweeps_total", "?")
        print(f"| {r['miners']:,} | {r['controller']} | {r['window_s']:.0f} | {r['cpu_pct_one_core']:.2f} "
              f"| {r['peak_rss_mib']:.1f} | {r['rss_mib']:.1f} | {r['connections_per_sweep']:.0f} | {r['startup_s']:.1f} "
              f"| {r['sim_cpu_pct_one_core']:.1f} | {float(sweep):.3f} s ({total} sweeps) |")


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "miner-sweep":
        miner_sweep(load(path), int(sys.argv[3]))
    else:
        agent(load(path))
