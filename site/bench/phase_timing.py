"""Reads `pivotctl audit --kind plan --json` on stdin and prints the first curtail phase newer
than audit id argv[1] that was confirmed: its duration on the controller's clock and the
per-move latency (issued → the agent's CONFIRMED) as p50/p90/max. Prints nothing if none yet.
Reads the whole stream: stopping early would close the pipe under pivotctl."""
import json
import sys
from datetime import datetime


def ts(x):
    # RFC 3339 with nanoseconds: Python takes microseconds.
    x = x.replace("Z", "+00:00")
    if "." in x:
        head, rest = x.split(".", 1)
        frac, zone = rest[:-6], rest[-6:]
        x = head + "." + frac[:6] + zone
    return datetime.fromisoformat(x).timestamp()


last = int(sys.argv[1])
found = False
for r in (json.loads(x) for x in sys.stdin if x.strip()):
    t = (r.get("detail") or {}).get("timing")
    if found or r["id"] <= last or not t or not t["label"].startswith("curtail"):
        continue
    if r["detail"].get("phase_outcome") != "confirmed":
        continue
    d = sorted(ts(m["confirmed_at"]) - ts(m["issued_at"])
               for m in t["moves"] if m.get("confirmed_at") and m.get("issued_at"))
    q = lambda f: d[min(len(d) - 1, int(f * len(d)))] if d else float("nan")
    issued = [ts(m["issued_at"]) for m in t["moves"] if m.get("issued_at")]
    confirmed = [ts(m["confirmed_at"]) for m in t["moves"] if m.get("confirmed_at")]
    spread = max(issued) - min(issued) if issued else float("nan")
    tail = ts(t["settled_at"]) - max(confirmed) if confirmed else float("nan")
    print("%s: phase %.2f s; per move issued to confirmed p50 %.2f p90 %.2f max %.2f s;"
          " intents issued over %.2f s; settled %.2f s after the last confirmation"
          % (t["label"], t["seconds"], q(0.5), q(0.9), q(1.0), spread, tail))
    found = True
    # SLOWEST=N: the N slowest moves too, on stderr (device, seconds, last outcome).
    import os
    slow = sorted(((ts(m["confirmed_at"]) - ts(m["issued_at"]), m["device_id"]) for m in t["moves"]
                   if m.get("confirmed_at") and m.get("issued_at")), reverse=True)
    for sec, dev in slow[:int(os.environ.get("SLOWEST", "0"))]:
        print("  slow: %s %.2f s" % (dev, sec), file=sys.stderr)
