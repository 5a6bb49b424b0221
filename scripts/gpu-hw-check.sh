#!/usr/bin/env bash
# Checks pivot's GPU power capping on a real NVIDIA GPU, and prints the figures docs/hardware.md
# asks for. Run it as root on the GPU host with a pivot-agent binary built elsewhere:
#
#   sudo scripts/gpu-hw-check.sh [PATH/TO/pivot-agent]       (default: target/release/pivot-agent)
#
# It lists the GPUs, caps GPU 0 to its minimum, reads back the enforced limit and samples the
# draw for 3 s, then restores GPU 0's default limit (also on failure or Ctrl-C). For the draw to
# show anything, GPU 0 must be busy: set LOAD_CMD to a command that loads it (e.g.
# LOAD_CMD="./gpu_burn 60"); it is started first and stopped at the end.
# Needs: the NVIDIA driver, python3 (to read the JSON).
set -euo pipefail

AGENT=${1:-target/release/pivot-agent}
[ -x "$AGENT" ] || { echo "gpu-hw-check: no pivot-agent at $AGENT" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || echo "gpu-hw-check: not root: setting power limits will fail (NVML needs root)" >&2
command -v python3 >/dev/null || { echo "gpu-hw-check: python3 is needed to read JSON" >&2; exit 1; }

out=$(mktemp -d)
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }
now() { date +%s.%N; }

echo "== $(date -u +%FT%TZ) on $(hostname)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,driver_version,power.limit,power.default_limit,power.min_limit,power.max_limit --format=csv || true

load_pid=""
if [ -n "${LOAD_CMD:-}" ]; then
  echo "== starting load: $LOAD_CMD"
  bash -c "$LOAD_CMD" >"$out/load.log" 2>&1 &
  load_pid=$!
  sleep 5
fi

echo "== pivot-agent gpu list --json"
"$AGENT" gpu list --json | tee "$out/list.json"
min=$(json "$out/list.json" "[0]['power_cap_min_w']")
default=$(json "$out/list.json" "[0]['power_cap_default_w']")
before=$(json "$out/list.json" "[0]['power_cap_w']")
echo "GPU 0: cap ${before} W now, default ${default} W, minimum ${min} W"

restore() {
  echo "== restoring GPU 0 to its default ${default} W"
  "$AGENT" gpu cap 0 "$default" --json || echo "gpu-hw-check: RESTORE FAILED: run 'nvidia-smi -i 0 -pl ${default}'" >&2
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null || true
}
trap restore EXIT

echo "== cap GPU 0 to its minimum ${min} W (enforced limit read back, draw confirmed within 3 s)"
t0=$(now)
"$AGENT" gpu cap 0 "$min" --json --confirm-ms 3000 | tee "$out/cap.json" || echo "(cap not confirmed on the draw: see the error above)"
t1=$(now)
echo "gpu cap returned after $(python3 -c "print(round(($t1 - $t0) * 1000))") ms (includes NVML init)"

echo "== draw over 3 s after the cap (t since the cap call, power_w, enforced cap)"
end=$(python3 -c "print($t0 + 3.0)")
while python3 -c "import sys; sys.exit(0 if $(now) < $end else 1)"; do
  "$AGENT" gpu list --json >"$out/sample.json"
  t=$(now)
  printf '%6d ms  %8s W  cap %s W\n' "$(python3 -c "print(round(($t - $t0) * 1000))")" \
    "$(json "$out/sample.json" "[0]['power_w']")" "$(json "$out/sample.json" "[0]['power_cap_enforced_w']")"
  sleep 0.2
done

echo "== summary"
if [ -s "$out/cap.json" ]; then
  python3 - "$out/cap.json" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1])):
    print(f"GPU {r['index']} ({r['uuid']}): requested {r['requested_w']} W, enforced {r['enforced_w']} W "
          f"after {r['enforced_after_ms']} ms; draw {r['draw_w']:.1f} W under the cap after "
          f"{r['draw_confirmed_after_ms']} ms")
EOF
fi
echo "raw files: $out"
