#!/usr/bin/env bash
# Healthy jobs vs jobs with a leased worker cut mid-job (silently: link
# down, no reset), on a namespace grid of WORKERS (default 9) workers at 1 Gbit/s.
#
#   cargo build --release && sudo scripts/cut-vs-healthy.sh [N=2048] [DELAY=0]
#
# Runs three healthy N³ f64 jobs, then three in which the first leased worker
# the tracker shows is cut DELAY seconds after the lease is seen (healed
# after the job), and prints each job's total_s, retries and failures.
set -uo pipefail
cd "$(dirname "$0")/.."
export SEPTET_BIN=${SEPTET_BIN:-$PWD/target/release/septet}
RD=${NETGRID_RUN_DIR:-/tmp/septet-cut-vs-healthy}
N=${1:-2048}
DELAY=${2:-0}
command -v bc >/dev/null || { echo "needs bc" >&2; exit 2; }
G="scripts/netgrid.sh --run-dir $RD"
J="--random $N,$N,$N --json --max-wait 20"
$G down >/dev/null 2>&1
$G up "${WORKERS:-9}" 1gbit >/dev/null
host_of() { local a=${1%:*}; local last=${a##*.}; echo "w$((last - 10))"; }
summ() { python3 -c 'import json,sys; d=json.load(sys.stdin); print("total_s=%.3f retries=%s failures=%s" % (d["total_s"], d["retries"], d["failures"]))'; }
for i in 1 2 3; do
  $G exec rq septet multiply $J > $RD/h$i.json 2>$RD/h$i.err
  echo "healthy $i $(summ < $RD/h$i.json 2>/dev/null || tail -2 $RD/h$i.err)"
done
for i in 1 2 3; do
  s=$(date +%s.%N)
  $G exec rq septet multiply $J > $RD/c$i.json 2>$RD/c$i.err &
  job=$!
  victim=
  for _ in $(seq 200); do
    victim=$($G exec cl septet peers --json 2>/dev/null | python3 -c 'import json,sys; ps=[p for p in json.load(sys.stdin) if p["in_use"]>0]; print(ps[-1]["addr"] if ps else "")')
    [[ -n $victim ]] && break
    sleep 0.02
  done
  if [[ -z $victim ]]; then
    wait $job
    echo "cut $i: the job ended before a leased worker was seen (use a larger N)"
    continue
  fi
  sleep "$DELAY"
  h=$(host_of "$victim"); $G cut "$h" >/dev/null; c=$(date +%s.%N)
  wait $job; rc=$?
  $G heal "$h" >/dev/null
  echo "cut $i rc=$rc cut $h at +$(echo "$c - $s" | bc)s $(summ < $RD/c$i.json 2>/dev/null || tail -2 $RD/c$i.err)"
  sleep 8
done
$G down >/dev/null
