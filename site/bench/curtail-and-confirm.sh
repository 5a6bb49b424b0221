#!/usr/bin/env bash
# Curtail-and-confirm on the simulated site: from an operator's curtail (a decision) to every
# mining miner confirmed asleep by its agent, as the controller's audit log times it
# (`phase 1/1 (curtail: N devices) confirmed X s after it was issued`).
#
#   site/bench/curtail-and-confirm.sh [MINERS] [RACKS] [RUNS]    # default 1000 4 3
#
# One pivot-site process (controller, agents, pivot-sim miners with the `fast` timing: a
# 150 ms ramp down, reported separately) with no GPU hosts, the market replaying at 1x so the
# economics stay still; after the site has settled, `pivotctl curtail miners`, then the phase's
# timing is read back, then `pivotctl resume miners` and the site is let settle again. Prints one
# line per run and the uptime (load) before the first.
set -euo pipefail
cd "$(dirname "$0")/../.."
miners=${1:-1000}
racks=${2:-4}
runs=${3:-3}
profile=${PROFILE:-release}   # PROFILE=debug: the debug build, to try the script
target="${CARGO_TARGET_DIR:-$PWD/target}"
if [ "$profile" = release ]; then
  cargo build --release -q -p pivot-site -p pivot-controller --bins
fi
out=$(mktemp -d)
trap 'kill "$site_pid" 2>/dev/null || true; wait "$site_pid" 2>/dev/null || true; rm -rf "$out"' EXIT
"$target/$profile/pivot-site" --listen 127.0.0.1:0 --miners "$miners" --racks "$racks" \
  --gpu-hosts 0 --speed 1 --no-hourly --out-dir "$out/site" >"$out/stdout" 2>"$out/stderr" &
site_pid=$!
started=$(date +%s.%N)
url=""
for _ in $(seq 1 600); do
  url=$(sed -n 's/.*pivotctl --controller \(http[^ ]*\) status.*/\1/p' "$out/stdout" | head -1)
  [ -n "$url" ] && break
  kill -0 "$site_pid" 2>/dev/null || { cat "$out/stderr" >&2; exit 1; }
  sleep 0.5
done
[ -n "$url" ] || { echo "pivot-site did not come up" >&2; exit 1; }
echo "site up after $(echo "$(date +%s.%N) - $started" | bc) s: $miners miners on $racks rack agents"
ctl="$target/$profile/pivotctl"
uptime
. site/bench/curtail-runs.sh
curtail_runs "$ctl" "$url" "$runs"
