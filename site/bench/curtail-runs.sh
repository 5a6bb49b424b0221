# Sourced by the curtail benches. `curtail_runs PIVOTCTL URL RUNS`: RUNS operator curtails of
# every mining miner on the controller at URL, each on the same settled fleet, one line per run
# from the audit log's phase timing (site/bench/phase_timing.py). A sourcing script that defines
# `cpu_now` (prints CPU counters) and `cpu_since COUNTERS` (prints the CPU used since, in words)
# gets each run's CPU, from the operator's call to the confirmed phase seen, on its line.
# ON_CURTAIL: a command started in the background as each curtail is called (e.g. a profiler).
# BEFORE_CURTAIL: a command run to its end just before each curtail is called, outside the timing
# (e.g. aging the emulated miners' credentials).

# The interpreter itself, not a version manager's shim: pyenv's shim costs some 80 ms of CPU a
# call (a bash script and its helpers), and the run loop below calls Python twice a second while
# the curtail being timed needs every core.
if [ -z "${PIVOT_BENCH_PY:-}" ]; then
  PIVOT_BENCH_PY=$(python3 -c 'import sys; print(sys.executable)')
fi
python3() { "$PIVOT_BENCH_PY" "$@"; }

# Waits until no plan is executing (the plan in status is done or absent).
settle() {
  for _ in $(seq 1 240); do
    state=$("$ctl" --controller "$url" status --json | python3 -c 'import json,sys; p=json.load(sys.stdin).get("plan") or {}; print(p.get("state",""))')
    case "$state" in executing) sleep 0.5 ;; *) return 0 ;; esac
  done
}

# The id of the newest audit record (of kind $1 if given), 0 when there is none.
newest_audit_id() {
  "$ctl" --controller "$url" audit --kind "${1:-}" --limit 1 --json | python3 -c 'import json,sys; l=[json.loads(x) for x in sys.stdin if x.strip()]; print(l[0]["id"] if l else 0)'
}

# The plan in the site status: "<plan id> <state>" (empty when there is none).
plan_now() {
  "$ctl" --controller "$url" status --json | python3 -c 'import json,sys; p=json.load(sys.stdin).get("plan") or {}; print(p.get("plan_id",""), p.get("state",""))'
}

mining_now() {
  "$ctl" --controller "$url" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["miners_mining"])'
}

curtail_runs() {
  ctl=$1 url=$2
  local runs=$3 first="" run mining last t0 t1 line c0 cpu
  for run in $(seq 1 "$runs"); do
    settle
    sleep 2
    # After a resume the planner wakes the miners in ramp steps over several plans: wait until
    # as many mine as before the first run (or four minutes), so every run curtails the same fleet.
    if [ -n "$first" ]; then
      for _ in $(seq 1 480); do
        [ "$(mining_now)" -ge "$first" ] && break
        sleep 0.5
      done
      settle
      # Name the miners that did not come back (at most five), for the logs, with the intent the
      # controller holds for each and its last status (what the planner believes it asked for).
      if [ "$(mining_now)" -lt "$first" ]; then
        "$ctl" --controller "$url" devices --json | python3 -c '
import json, sys
late = [d for d in json.load(sys.stdin) if d["kind"] == "miner" and d["state"] != "mining"]
for d in late[:5]:
    i, s = d.get("intent") or {}, d.get("intent_status") or {}
    print("not mining after the resume:", d["device_id"], "on", d["host_id"], d["model"], d["state"], "(" + d.get("state_from", "") + ")", d["problem"],
          "| intent:", i.get("generation"), i.get("target"), i.get("plan_id"),
          "| status:", s.get("generation"), s.get("phase"), "retrying" if s.get("retrying") else "", s.get("detail"))'
      fi
    fi
    if [ -n "${BEFORE_CURTAIL:-}" ]; then bash -c "$BEFORE_CURTAIL"; fi
    mining=$(mining_now)
    first=${first:-$mining}
    last=$(newest_audit_id plan)
    c0=""; cpu=""
    if declare -F cpu_now > /dev/null; then c0=$(cpu_now); fi
    t0=$(date +%s.%N)
    plan_before=$(plan_now)
    if [ -n "${ON_CURTAIL:-}" ]; then bash -c "$ON_CURTAIL" & fi
    "$ctl" --controller "$url" curtail miners --reason "bench: curtail-and-confirm" >/dev/null
    # Waits on the plan in the site status (a few hundred bytes), then reads the audit log once:
    # pages of plan records carry every move's timing (megabytes at 10,000 miners), and reading
    # them ten times a second took CPU from the run being measured. The time measured is the
    # phase's own, from the audit log, so how often this looks does not change it; each look
    # (a pivotctl, an interpreter, a site status in the controller) costs some 50 ms of CPU
    # that the run would otherwise have, so the first comes after 1.5 s and then one a second.
    sleep 1.5
    for _ in $(seq 1 600); do
      case "$(plan_now)" in "$plan_before" | *" executing") sleep 1 ;; *) break ;; esac
    done
    line=""
    for _ in $(seq 1 120); do
      line=$("$ctl" --controller "$url" audit --kind plan --limit 5 --json | python3 site/bench/phase_timing.py "$last")
      [ -n "$line" ] && break
      sleep 1
    done
    t1=$(date +%s.%N)
    if [ -n "$c0" ]; then cpu="; CPU meanwhile: $(cpu_since "$c0")"; fi
    echo "run $run: $mining mining before; ${line:-no confirmed curtail phase in 2 minutes}; operator call to record seen: $(echo "$t1 - $t0" | bc) s$cpu"
    "$ctl" --controller "$url" resume miners >/dev/null
  done
}
