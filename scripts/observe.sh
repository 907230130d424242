#!/usr/bin/env bash
# Checks septet's --http endpoints on real output, as an operator would see
# them: starts a tracker and seven workers with --http, keeps the grid busy
# (jobs back to back, leases held and queued, one detached), then
#   - runs `promtool check metrics` on the tracker's and every worker's /metrics;
#   - opens the tracker's status page in headless Chromium, checks from the
#     DOM (after its script ran) that the peer table shows seven alive peers
#     and the page is live, and saves a screenshot.
# Builds nothing: SEPTET_BIN picks the binary (default target/release/septet).
#
# Needs promtool and chromium (Debian: apt-get install prometheus chromium).
#
#   scripts/observe.sh                               # screenshot in target/observe/
#   SCREENSHOT=docs/status.png scripts/observe.sh    # refresh the README's picture
#   BUSY_SECS=20 scripts/observe.sh                  # how long the grid is kept busy first
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${SEPTET_BIN:-target/release/septet}
OUT=${OUT_DIR:-target/observe}
SHOT=${SCREENSHOT:-$OUT/status.png}
BUSY_SECS=${BUSY_SECS:-25}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}

fail() { echo "observe: FAIL: $*" >&2; exit 1; }
[[ -x $BIN ]] || fail "no septet binary at $BIN (build it, or set SEPTET_BIN)"
command -v promtool >/dev/null || fail "promtool not found (Debian: apt-get install prometheus)"
[[ -n $CHROMIUM ]] || fail "chromium not found (Debian: apt-get install chromium)"
command -v curl >/dev/null || fail "curl not found"

mkdir -p "$OUT" "$(dirname "$SHOT")"
rm -f "$OUT"/*.log "$OUT"/*.prom "$OUT"/dom.html
PIDS=()
cleanup() {
  # Clients and loops first (newest first), then the workers, then the tracker.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[$i]}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# Waits up to 30 s for FILE to contain a line with PATTERN; prints what follows it.
announced() {
  local file=$1 pattern=$2
  for _ in $(seq 300); do
    if grep -q "$pattern" "$file" 2>/dev/null; then
      grep -m1 "$pattern" "$file" | sed "s|.*$pattern||; s|[ ,].*||"
      return 0
    fi
    sleep 0.1
  done
  fail "$file never said '$pattern'"
}

"$BIN" tracker --listen 127.0.0.1:0 --http 127.0.0.1:0 --lease-ttl 30 2>"$OUT/tracker.log" &
PIDS+=($!)
TRACKER=$(announced "$OUT/tracker.log" "listening on ")
PAGE=$(announced "$OUT/tracker.log" "status page at ")
PAGE=${PAGE%/}
echo "observe: tracker on $TRACKER, status page at $PAGE/"

WORKER_METRICS=()
for i in 1 2 3 4 5 6 7; do
  "$BIN" worker --tracker "$TRACKER" --threads 1 --http 127.0.0.1:0 2>"$OUT/worker$i.log" &
  PIDS+=($!)
  WORKER_METRICS+=("$(announced "$OUT/worker$i.log" "metrics at ")")
done
for _ in $(seq 100); do
  alive=$(curl -sf "$PAGE/metrics" | awk '$1 == "septet_tracker_peers{state=\"alive\"}" { print $2 }')
  [[ ${alive:-0} == 7 ]] && break
  sleep 0.1
done
[[ ${alive:-0} == 7 ]] || fail "the seven workers did not register"

# Busy: jobs back to back, and leases that hold slots and queue beside
# them. Each loop runs its commands in the background and waits, so that
# killing the loop (the TERM trap) ends the command it is waiting for too.
busy() {
  local child=
  trap 'kill $child 2>/dev/null; exit 0' TERM
  while ((SECONDS < end)); do
    for cmd in "$@"; do
      eval "\"\$BIN\" $cmd" >/dev/null 2>>"$OUT/busy.log" &
      child=$!
      wait "$child" || true
    done
  done
}
end=$((SECONDS + BUSY_SECS))
busy "multiply --tracker $TRACKER --random 192,192,192" &
PIDS+=($!)
busy "lease --tracker $TRACKER --count 2 --hold 1.5" "lease --tracker $TRACKER --count 4 --hold 0.7" &
PIDS+=($!)
sleep "$BUSY_SECS"
# In force, detached, and queued when the picture is taken.
"$BIN" lease --tracker "$TRACKER" --count 1 --detach >/dev/null 2>&1
"$BIN" lease --tracker "$TRACKER" --count 3 --hold 30 >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.3
"$BIN" lease --tracker "$TRACKER" --count 5 --hold 30 >/dev/null 2>&1 &
PIDS+=($!)
sleep 1.5

echo "== promtool check metrics: tracker"
curl -sf "$PAGE/metrics" >"$OUT/tracker.prom"
promtool check metrics <"$OUT/tracker.prom" || fail "promtool rejected the tracker's metrics"
grep -q '^septet_tracker_leases_granted_total [1-9]' "$OUT/tracker.prom" || fail "no lease was counted"
for i in "${!WORKER_METRICS[@]}"; do
  echo "== promtool check metrics: worker $((i + 1))"
  curl -sf "${WORKER_METRICS[$i]}" >"$OUT/worker$((i + 1)).prom"
  promtool check metrics <"$OUT/worker$((i + 1)).prom" || fail "promtool rejected worker $((i + 1))'s metrics"
done
products=$(cat "$OUT"/worker*.prom | awk '$1 ~ /^septet_worker_products_total/ && $1 ~ /outcome="ok"/ { s += $2 } END { print s + 0 }')
((products >= 7)) || fail "the workers counted $products products"
echo "observe: promtool accepted $((${#WORKER_METRICS[@]} + 1)) scrapes; the workers computed $products products"

CHROME=("$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --virtual-time-budget=4000)
echo "== chromium: the status page after its script ran"
"${CHROME[@]}" --dump-dom "$PAGE/" >"$OUT/dom.html" 2>"$OUT/chromium.log" || fail "chromium could not load $PAGE/"
alive_rows=$(grep -o '<span class="pill alive">alive</span>' "$OUT/dom.html" | wc -l)
((alive_rows == 7)) || fail "the page's peer table shows $alive_rows alive peers, not 7 (see $OUT/dom.html)"
grep -q 'id="live" class="live"' "$OUT/dom.html" || fail "the page never went live (see $OUT/dom.html)"
grep -q 'id="c-alive">7<' "$OUT/dom.html" || fail "the summary does not show 7 alive peers"
if grep -Eqi '[0-9a-f]{64}' "$OUT/dom.html"; then fail "the page shows something shaped like a lease token"; fi
"${CHROME[@]}" --window-size=1280,930 --screenshot="$SHOT" "$PAGE/" 2>>"$OUT/chromium.log" || fail "no screenshot"
[[ -s $SHOT ]] || fail "empty screenshot"
echo "observe: OK — the page shows seven alive peers; screenshot in $SHOT"
