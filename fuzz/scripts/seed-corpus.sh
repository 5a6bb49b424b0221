#!/usr/bin/env bash
# Seeds the corpora of the policy and configuration fuzz targets from the repository's own
# documents: the example configurations, the built-in policy and the policies the tests use.
# Writes fuzz/corpus/{policy_parse,controller_config,agent_config}/ (ignored by git).
#
#   fuzz/scripts/seed-corpus.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=fuzz/corpus
mkdir -p "$out/policy_parse" "$out/controller_config" "$out/agent_config"

cp deploy/config/controller.example.toml "$out/controller_config/example.toml"
for f in deploy/config/agent*.toml; do
  cp "$f" "$out/agent_config/$(basename "$f")"
done

# Policies: the built-in one (between its r#" "# markers in controller/src/policy.rs) and the
# TOML policies the tests write. policy_parse reads 8 bytes of instant first: seed them zero,
# then one instant in a 4CP afternoon (2026-07-15T20:30:00Z).
policy() { # name, text
  printf '\0\0\0\0\0\0\0\0%s' "$2" > "$out/policy_parse/$1-epoch"
  { printf '\xc8\xed\x57\x6a\x00\x00\x00\x00'; printf '%s' "$2"; } > "$out/policy_parse/$1-4cp"
}
policy default "$(sed -n '/^pub const DEFAULT_POLICY: &str = r#"/,/^"#;/p' controller/src/policy.rs \
  | sed '1s/^pub const DEFAULT_POLICY: &str = r#"//; $d')"
policy schedule 'name = "night-curtail"
[[schedule]]
name = "4cp"
time_zone = "America/Chicago"
months = [6, 7, 8, 9]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "15:00"
end = "17:30"
curtail_mining = true
[[schedule]]
name = "tou"
time_zone = "-05:00"
start = "22:00"
end = "06:00"
cap_w = 5000000
curtail_groups = ["old"]
'
policy e2e 'name = "e2e"
[economic]
min_margin_usd_per_mwh = 0.0
hysteresis_usd_per_mwh = 4.0
min_dwell_s = 0
ramp_limit_w_per_min = 0.0
ai_buffer_hosts = 0
ai_drain_delay_s = 0
shed_lead_s = 60
[market_failure]
action = "curtail-mining"
[protected]
devices = ["miner/10.0.0.1:4028"]
groups = ["firm"]
'
echo "seeded: $(ls "$out/policy_parse" | wc -l) policies, $(ls "$out/controller_config" | wc -l) controller and $(ls "$out/agent_config" | wc -l) agent configurations"
