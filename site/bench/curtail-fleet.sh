#!/usr/bin/env bash
# Curtail-and-confirm at fleet size, split across processes (one process cannot hold 10,000
# emulated miners and their agents' connections under a 20,000 open-file limit): pivot-sim
# processes of at most 5,000 miners each on their own 127.x addresses (`--ip-range`, the `fast`
# timing: 150 ms ramp down), a `pivot-controller dev` with a site cap above the fleet, and AGENTS
# pivot-agent processes each polling its share every INTERVAL_S. Then, as site/bench/curtail-and-confirm.sh:
# an operator's `pivotctl curtail miners`, timed by the controller's audit log.
#
#   site/bench/curtail-fleet.sh [MINERS] [AGENTS] [RUNS]      # default 10000 8 2
#
# Environment: DIALECT (pivot-sim --dialect, default mixed), INTERVAL_S (agents' poll interval,
# default 5), CONTROLLER_ENV (variables for the controller only, e.g. MALLOC_ARENA_MAX=2), WINDOW_S (steady-state CPU window before the runs, default 30), KEEP=1 (keep the processes' logs and configs), WATCH=1 (count what a `pivotctl watch` missed), PIVOT_BIN_DIR (binaries to run instead of this checkout's release build), STATUS_CALLS=N (time N site-status calls after the runs), SORT_FLEET=1 (give each agent its miners grouped by dialect, not the six in turn), SIM_ARGS (more pivot-sim arguments; default `--threads 1`: each emulator process serves its miners on its own thread, as two processes on two cores need no more, and its CPU stands in for miners that would run on their own hardware), COLD=1 (before each curtail, age the miners' LuxOS sessions, Whatsminer v2 tokens and Antminer Digest nonces two hours: pivot-sim's SIGUSR1, so each curtail logs on again as one hours after the last command would). Prints the load before the runs and each process's CPU time and peak RSS after them.
set -euo pipefail
cd "$(dirname "$0")/../.."
miners=${1:-10000}
agents=${2:-8}
runs=${3:-2}
dialect=${DIALECT:-mixed}
interval=${INTERVAL_S:-5}
# The dev controller believes a reading for 30 s (three 10 s telemetry intervals): polls further
# apart leave miners unseen between them: a curtail sleeps them too but counts them at their
# maximum until read, and a resume wakes only the miners read in the last 30 s (the agents say
# so in their logs).
if [ "$(echo "$interval + 10 > 30" | bc)" = 1 ]; then
  echo "curtail-fleet: INTERVAL_S=$interval leaves miners unseen between polls (readings are believed for 30 s); resumes would wake only part of the fleet" >&2
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
# PIVOT_BIN_DIR: run the binaries found there (another build, for an A/B) instead of building.
if [ -n "${PIVOT_BIN_DIR:-}" ]; then
  bin=$PIVOT_BIN_DIR
else
  bin="$target/release"
  cargo build --release -q -p pivot-sim -p pivot-agent -p pivot-controller --bins
fi
out=$(mktemp -d)
pids=()
sim_pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "files kept in $out"; else rm -rf "$out"; fi
}
trap cleanup EXIT
ip_plus() { python3 -c "import ipaddress,sys; print(ipaddress.IPv4Address(sys.argv[1]) + int(sys.argv[2]))" "$1" "$2"; }

started=$(date +%s.%N)
done_=0 part=0
while [ "$done_" -lt "$miners" ]; do
  n=$(( miners - done_ < 5000 ? miners - done_ : 5000 ))
  "$bin/pivot-sim" miners --fast ${SIM_ARGS---threads 1} --dialect "$dialect" --count "$n" --ip-range "$(ip_plus 127.220.0.1 "$done_")" \
    > "$out/fleet.$part" 2> "$out/sim.$part.log" &
  pids+=($!)
  sim_pids+=($!)
  done_=$(( done_ + n )); part=$(( part + 1 ))
done
for _ in $(seq 600); do
  [ "$(cat "$out"/fleet.* 2>/dev/null | wc -l)" -ge "$miners" ] && break
  sleep 0.5
done
cat "$out"/fleet.* > "$out/fleet"
# SORT_FLEET=1: the agents take the miners grouped by dialect (each one or two dialects, as racks
# of one model bought together would be) instead of every agent all six in turn.
if [ -n "${SORT_FLEET:-}" ]; then
  sort -s -k1,1 "$out/fleet" > "$out/fleet.sorted" && mv "$out/fleet.sorted" "$out/fleet"
fi
[ "$(wc -l < "$out/fleet")" -eq "$miners" ] || { echo "curtail-fleet: the emulated fleet did not start" >&2; exit 1; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
web=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
env ${CONTROLLER_ENV:-} "$bin/pivot-controller" dev --listen "127.0.0.1:$port" --web "127.0.0.1:$web" \
  --site-cap-w $(( miners * 10000 )) > "$out/controller.out" 2> "$out/controller.log" &
controller=$!
pids+=($controller)

per=$(( (miners + agents - 1) / agents ))
agent_pids=()
for a in $(seq 0 $(( agents - 1 ))); do
  dir="$out/agent-$a"
  mkdir -p "$dir/state"
  {
    printf 'host_id = "rack-%s"\nstate_dir = "%s"\n[controller]\nurl = "%s"\n' "$a" "$dir/state" "$url"
    printf '[poll]\nminer_interval_s = %s\n[metrics]\nlisten = ""\n' "$interval"
    awk -v from=$(( a * per + 1 )) -v to=$(( (a + 1) * per )) \
      'NR >= from && NR <= to { printf "[[miners]]\naddr = \"%s\"\ndialect = \"%s\"\n", $2, $1 }' "$out/fleet"
  } > "$dir/agent.toml"
  "$bin/pivot-agent" run --config "$dir/agent.toml" > "$dir/stdout.log" 2> "$dir/stderr.log" &
  agent_pids+=($!)
  pids+=($!)
done
ctl="$bin/pivotctl"
mining_count() {
  "$ctl" --controller "$url" status --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("miners_mining", 0))' 2>/dev/null || echo 0
}
# Up when the controller sees every miner, then every miner mining.
for _ in $(seq 1200); do
  seen=$("$ctl" --controller "$url" status --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("miners_total", 0))' 2>/dev/null || echo 0)
  [ "$seen" -ge "$miners" ] && break
  sleep 0.5
done
# Runs that each curtail the whole fleet: no dwell and no ramp, so a resume brings every miner
# back at once and the next run starts from the same fleet.
printf 'name = "curtail bench"\n[economic]\nmin_dwell_s = 0\nramp_limit_w_per_min = 0\n' > "$out/policy.toml"
"$ctl" --controller "$url" policy set "$out/policy.toml" > /dev/null
for _ in $(seq 1200); do
  [ "$(mining_count)" -ge "$miners" ] && break
  sleep 0.5
done
echo "fleet up after $(echo "$(date +%s.%N) - $started" | bc) s: $seen of $miners $dialect miners seen, $(mining_count) mining, on $agents agents polling every $interval s"
uptime
tck=$(getconf CLK_TCK)
ticks() { awk '{ sub(/.*\) /, ""); split($0, f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
sum_ticks() { local t=0 p; for p in "$@"; do t=$(( t + $(ticks "$p") )); done; echo "$t"; }
# Steady state first: the fleet polled, nothing moving, over WINDOW_S seconds.
window=${WINDOW_S:-30}
c0=$(ticks "$controller"); a0=$(sum_ticks "${agent_pids[@]}"); s0=$(sum_ticks "${sim_pids[@]}"); t0=$(date +%s.%N)
sleep "$window"
c1=$(ticks "$controller"); a1=$(sum_ticks "${agent_pids[@]}"); s1=$(sum_ticks "${sim_pids[@]}"); t1=$(date +%s.%N)
pct() { echo "scale=1; 100 * ($2 - $1) / $tck / ($t1 - $t0)" | bc; }
echo "steady state over ${window} s (% of one core): controller $(pct "$c0" "$c1"), $agents agents together $(pct "$a0" "$a1"), pivot-sim $(pct "$s0" "$s1")"
. site/bench/curtail-runs.sh
# WATCH=1: a `pivotctl watch` through the runs; at the end, how many of the audit records written
# meanwhile it printed (every record is published to watchers; one that falls behind misses some).
if [ -n "${WATCH:-}" ]; then
  watch_from=$(newest_audit_id)
  "$ctl" --controller "$url" watch > "$out/watch.txt" 2> "$out/watch.log" &
  pids+=($!)
  sleep 1
fi
cpu_now() { echo "$(ticks "$controller") $(sum_ticks "${agent_pids[@]}") $(sum_ticks "${sim_pids[@]}")"; }
cpu_since() {
  local c a s c2 a2 s2
  read -r c a s <<< "$1"
  read -r c2 a2 s2 <<< "$(cpu_now)"
  echo "controller $(echo "scale=2; ($c2 - $c) / $tck" | bc) s, $agents agents $(echo "scale=2; ($a2 - $a) / $tck" | bc) s, pivot-sim $(echo "scale=2; ($s2 - $s) / $tck" | bc) s"
}
if [ -n "${COLD:-}" ]; then
  BEFORE_CURTAIL="kill -USR1 ${sim_pids[*]}"
  export BEFORE_CURTAIL
fi
curtail_runs "$ctl" "$url" "$runs"
if [ -n "${WATCH:-}" ]; then
  # Counted once the last resume is done and nothing has been written for a while.
  settle
  while :; do
    watch_to=$(newest_audit_id)
    sleep 3
    [ "$(newest_audit_id)" = "$watch_to" ] && break
  done
  told=$(awk '$2 == "missed" {n += $3} END {print n + 0}' "$out/watch.txt")
  echo "watcher: printed $(grep -vc '^[^ ]* missed ' "$out/watch.txt") of the $(( watch_to - watch_from )) audit records written while it watched; told it missed $told"
fi
# STATUS_CALLS=N: N `pivotctl status --json` calls once the runs are done (the newest plan is a
# 10,000-move one): the controller CPU and the wall time per call.
if [ -n "${STATUS_CALLS:-}" ]; then
  settle
  c0=$(ticks "$controller"); t0=$(date +%s.%N)
  for _ in $(seq "$STATUS_CALLS"); do "$ctl" --controller "$url" status --json > /dev/null; done
  c1=$(ticks "$controller"); t1=$(date +%s.%N)
  echo "site status: $(echo "scale=1; 1000 * ($c1 - $c0) / $tck / $STATUS_CALLS" | bc) ms controller CPU and $(echo "scale=1; 1000 * ($t1 - $t0) / $STATUS_CALLS" | bc) ms wall per call (pivotctl included), over $STATUS_CALLS calls"
fi
usage() { echo "scale=1; $(ticks "$1") / $tck" | bc; }
hwm() { awk '$1 == "VmHWM:" { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
echo "controller: $(usage "$controller") s CPU, peak RSS $(hwm "$controller") MiB"
for p in "${agent_pids[@]}"; do printf 'agent %s: %s s CPU, peak RSS %s MiB\n' "$p" "$(usage "$p")" "$(hwm "$p")"; done
for p in "${sim_pids[@]}"; do printf 'pivot-sim %s: %s s CPU, peak RSS %s MiB\n' "$p" "$(usage "$p")" "$(hwm "$p")"; done
echo "wall: $(echo "$(date +%s.%N) - $started" | bc) s"
