#!/usr/bin/env bash
# What --encrypt costs a job, measured as a user runs septet: a plain grid
# and an encrypted grid of separate processes (a tracker and seven workers
# each, loopback) side by side, both warmed by one job, then ROUNDS
# interleaved jobs on each (the order alternating). Prints each job, the
# medians of the job times (`job_s` of --json: the lease wait left out) and
# their ratio.
#
#   cargo build --release && scripts/secure-ratio.sh [N] [ROUNDS]   (defaults 4096, 5)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-4096}"
ROUNDS="${2:-5}"
BIN="${SEPTET_BIN:-target/release/septet}"
DIR="$(mktemp -d /tmp/septet-secure-ratio.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
"$BIN" secret --out "$DIR/secret" >/dev/null

# start_grid NAME SECURITY...: a tracker and seven workers; sets TRACKER_<NAME>.
start_grid() {
  local name="$1"
  shift
  "$BIN" tracker --listen 127.0.0.1:0 "$@" >"$DIR/$name-tracker.out" 2>"$DIR/$name-tracker.log" &
  PIDS+=($!)
  local addr=""
  for _ in $(seq 100); do
    addr="$(grep -o 'tracker listening[^ ]* addr=[0-9.:]*' "$DIR/$name-tracker.log" 2>/dev/null | grep -o '[0-9.]*:[0-9]*$' || true)"
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "the $name tracker did not start" >&2; cat "$DIR/$name-tracker.log" >&2; exit 1; }
  for i in $(seq 7); do
    "$BIN" worker --tracker "$addr" "$@" >/dev/null 2>"$DIR/$name-worker$i.log" &
    PIDS+=($!)
  done
  for _ in $(seq 300); do
    up="$("$BIN" peers --tracker "$addr" --json "$@" 2>/dev/null | grep -o '"state": *"alive"' | wc -l || true)"
    [ "$up" -ge 7 ] && break
    sleep 0.2
  done
  printf -v "TRACKER_$name" '%s' "$addr"
}

job() { # job NAME SECURITY... -> prints job_s
  local name="$1"
  shift
  local tracker_var="TRACKER_$name"
  "$BIN" multiply --tracker "${!tracker_var}" --random "$N,$N,$N" --json "$@" 2>>"$DIR/$name-jobs.log" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_s"])'
}

start_grid plain
start_grid encrypted --secret-file "$DIR/secret" --encrypt
enc=(--secret-file "$DIR/secret" --encrypt)
echo "warm-up: plain $(job plain) s, encrypted $(job encrypted "${enc[@]}") s"
plain=()
encrypted=()
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    p="$(job plain)"; e="$(job encrypted "${enc[@]}")"
  else
    e="$(job encrypted "${enc[@]}")"; p="$(job plain)"
  fi
  plain+=("$p")
  encrypted+=("$e")
  echo "round $r: plain $p s, encrypted $e s"
done
python3 - "$N" "${plain[*]}" "${encrypted[*]}" <<'EOF'
import statistics, sys
n, plain, enc = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
p, e = statistics.median(plain), statistics.median(enc)
print(f"n={n}: median plain {p:.3f} s, encrypted {e:.3f} s: encrypted/plain {e / p:.3f}x over {len(plain)} interleaved rounds")
EOF
