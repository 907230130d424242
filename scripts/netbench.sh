#!/usr/bin/env bash
# netbench.sh: the three namespace-grid measurements (partition, straggler,
# link bound) on scripts/netgrid.sh grids, ending in a table a README can quote.
#
#   cargo build --release && sudo scripts/netbench.sh [--quick] [PART...]
#
# PART is partition, straggler, bound or all (the default):
#
#   partition  n=4096 f64 jobs on WORKERS (default 9) workers at RATE (1gbit):
#              JOBS healthy jobs, then JOBS jobs in which one leased worker
#              (as the tracker's peer table shows it) is cut silently (link
#              down, no reset) CUT_DELAY s (default 0) after the lease is seen,
#              and healed after the job. Goal: cut median <= 1.3 x healthy
#              median + 5 s. With CUT_ROLE=reducer the worker cut is C11's
#              reducer instead, CUT_DELAY s after the requester logs its
#              relay plan (so while C flows back, with a delay of a few
#              seconds at n=4096).
#   straggler  n=2048 jobs on WORKERS (default 8) workers at RATE: JOBS healthy
#              jobs, then JOBS jobs with ONE worker's link shaped to SLOW_RATE
#              (40mbit). Before each slowed job a worker the tracker will lease
#              is predicted from `septet peers --json` (alive, not on
#              probation, least in_use, least leases_total, lowest id; the
#              i-th job shapes the i-th of the seven slots in that order, so
#              the straggler usually holds a different product each time),
#              shaped, and restored to RATE after the job. A worker an earlier
#              job put on probation ranks last, so it is not chosen while there
#              are others to lease; that the chosen one really
#              was leased is checked while the job runs (its in_use > 0 in the
#              tracker's table) and in the job's JSON (a product or a failure
#              on its address). A slowed job whose straggler was not leased is
#              shown but not counted, and another is run (at most JOBS extra).
#              Goals: median <= 1.3 x and slowest <= 1.6 x the healthy median.
#   bound      the healthy n=2048 jobs (shared with straggler when both run)
#              against the requester's link bound, bytes_sent / RATE.
#              Goal: <= 1.25 x.
#   relay      R_N (default 2048) jobs on R_WORKERS (default 8) workers at
#              RATE, JOBS relayed and JOBS direct (`multiply --plan direct`, the
#              plan before the relay), interleaved: the medians, relay ÷
#              direct, the relay against the time the requester's link
#              needs for 2·n² words (A and B once), and its bytes in n²·w.
#              Goals (issue 16): at 200mbit n=2048 relay <= 1.3 x that
#              bound; at 1gbit n=4096 relay >= 1.4 x faster than direct.
#   first      F_N (default 4096) jobs on F_WORKERS (default 8) workers at
#              RATE: JOBS fresh grids, two jobs on each (plan auto: the relay
#              here), nothing run before them: the first job's time over
#              the second's, per grid and their median. Goal (issue 16):
#              <= 1.2x. The workers warm up as by default (--warm-up 4096).
#   liar       L_N (default 4096) jobs on L_WORKERS (default 8) workers at
#              RATE (the binary built with --features fault-injection):
#              JOBS rounds, each restarting w0 with --fault=corrupt (it
#              registers afresh, so it is leased first), then one job with
#              it and one healthy job after (the tracker now leases it
#              last). A round whose liar was not leased is shown but not
#              counted. The medians, liar ÷ healthy, and how the liar
#              jobs ended (plan, move). No goal; issue 16 asks that only
#              the liar's work is done again.
#   depth      D_N (default 4096) jobs on D_WORKERS (default 49) workers at
#              RATE, JOBS at --depth 1 and JOBS at --depth 2, interleaved
#              (one warm-up job each): the medians of the jobs' own time
#              (job_s), depth 2 / depth 1, and depth 2's bytes in n²·w. No
#              goal on one host (issue 20): the 49 workers share its cores.
#
# Each job is `septet multiply --random N,N,N --json` run from the requester's
# namespace; one warm-up job per grid is run first and not counted. Every part
# has its own grid and run directory; the grids are taken down on exit
# (including Ctrl-C). Job JSON, stderr and the grid's logs are kept in OUT.
#
# Options:
#   --quick      smoke test: partition n=2048, straggler/bound n=1024, JOBS=2
#   -h, --help   this help
#
# Environment:
#   SEPTET_BIN   septet binary (default target/release/septet)
#   WORKERS      workers per grid (default: 9 for partition, 8 for
#                straggler/bound); P_WORKERS / S_WORKERS set one grid only
#   JOBS         jobs of each kind (default 5, --quick 2)
#   P_N, S_N     matrix sizes (default 4096 and 2048); R_N (2048), D_N (4096),
#                F_N (4096), L_N (4096)
#   D_WORKERS    workers of the depth grid (default 49)
#   RATE         every link's rate (default 1gbit; tc units kbit/mbit/gbit)
#   SLOW_RATE    the straggler's link (default 40mbit)
#   CUT_DELAY    seconds between seeing the lease (or the plan) and the cut
#                (default 0)
#   CUT_ROLE     any (default: a leased worker) or reducer (C11's reducer)
#   OUT          where job JSON and logs go (default /tmp/septet-netbench.PID)
#
# Needs root, bash, ip(8), tc(8) (tbf; netem is not used) and python3.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

QUICK=
PARTS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) QUICK=1 ;;
    -h | --help) usage; exit 0 ;;
    partition | straggler | bound | relay | first | depth | liar) PARTS+=("$1") ;;
    all) PARTS+=(partition straggler bound) ;;
    *) echo "netbench: unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ ${#PARTS[@]} -gt 0 ]] || PARTS=(partition straggler bound)
want() { local p; for p in "${PARTS[@]}"; do [[ $p == "$1" ]] && return 0; done; return 1; }

export SEPTET_BIN=${SEPTET_BIN:-$PWD/target/release/septet}
if [[ -n $QUICK ]]; then
  JOBS=${JOBS:-2}; P_N=${P_N:-2048}; S_N=${S_N:-1024}
else
  JOBS=${JOBS:-5}; P_N=${P_N:-4096}; S_N=${S_N:-2048}
fi
R_N=${R_N:-2048}
R_WORKERS=${R_WORKERS:-${WORKERS:-8}}
D_N=${D_N:-4096}
F_N=${F_N:-4096}
F_WORKERS=${F_WORKERS:-${WORKERS:-8}}
L_N=${L_N:-4096}
L_WORKERS=${L_WORKERS:-${WORKERS:-8}}
D_WORKERS=${D_WORKERS:-49}
P_WORKERS=${P_WORKERS:-${WORKERS:-9}}
S_WORKERS=${S_WORKERS:-${WORKERS:-8}}
RATE=${RATE:-1gbit}
SLOW_RATE=${SLOW_RATE:-40mbit}
CUT_DELAY=${CUT_DELAY:-0}
CUT_ROLE=${CUT_ROLE:-any}
[[ $CUT_ROLE == any || $CUT_ROLE == reducer ]] || { echo "netbench: CUT_ROLE is any or reducer" >&2; exit 2; }
OUT=${OUT:-/tmp/septet-netbench.$$}
LEASE=7 # slots per multiply lease

[[ $(id -u) -eq 0 ]] || { echo "netbench: needs root (namespaces, tc)" >&2; exit 2; }
for c in ip tc python3; do
  command -v $c >/dev/null || { echo "netbench: needs $c" >&2; exit 2; }
done
[[ -x $SEPTET_BIN ]] || { echo "netbench: no septet binary at $SEPTET_BIN (cargo build --release, or set SEPTET_BIN)" >&2; exit 2; }
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)

# --- python helpers ----------------------------------------------------------
# One program, a command per measurement step: reading the peer table, job
# JSON and the statistics. Peer tables are read from the spare client's
# namespace ("cl") through netgrid.sh exec.
read -r -d '' PY <<'EOF'
import json, os, re, statistics, subprocess, sys, time

def peers(rd):
    cmd = ["scripts/netgrid.sh", "--run-dir", rd, "exec", "cl", "septet", "peers", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None

def host(addr):
    i = int(addr.split(":")[0].rsplit(".", 1)[1]) - 10
    return "w%d" % i if i >= 0 else addr

def running(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

def rate_bytes(rate):
    r = rate.lower()
    for unit, mult in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)):
        if r.endswith(unit):
            return float(r[: -len(unit)]) * mult / 8
    sys.exit("netbench: cannot read rate %r (use kbit, mbit or gbit)" % rate)

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def runs(d, prefix, jobs):
    # The JSON of jobs d/PREFIX1.json .. d/PREFIXjobs.json that finished.
    return [j for j in (load("%s/%s%d.json" % (d, prefix, i)) for i in range(1, jobs + 1)) if j]

def fmt(x):
    return "%.2f" % x

def mark(ok):
    return "\u2714" if ok else "\u2718"

def rows(path):
    # kind idx total_s counted note... (tab-separated)
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            k, i, t, c = line.rstrip("\n").split("\t")[:4]
            out.append((k, int(i), float(t), c == "1"))
    return out

def totals(rs, kind):
    return [t for k, _, t, c in rs if k == kind and c]

cmd, a = sys.argv[1], sys.argv[2:]

if cmd == "wait-idle":
    # RD WORKERS TIMEOUT: every worker alive with no slot in use.
    rd, n, timeout = a[0], int(a[1]), float(a[2])
    end = time.time() + timeout
    while True:
        ps = peers(rd)
        if ps is not None:
            alive = [p for p in ps if p["state"] == "alive"]
            if len(alive) >= n and all(p["in_use"] == 0 for p in ps):
                sys.exit(0)
        if time.time() > end:
            desc = "no peer table" if ps is None else ", ".join(
                "%s %s in_use=%d" % (host(p["addr"]), p["state"], p["in_use"]) for p in ps)
            print("grid not idle after %gs: %s" % (timeout, desc))
            sys.exit(1)
        time.sleep(0.2)

elif cmd == "lease-watch":
    # RD JOB_PID TIMEOUT: wait until a lease shows in the table (some in_use >
    # 0); print the time it was seen and the addresses in use, in table order.
    # Exit 1 if the job ended (or TIMEOUT passed) first.
    rd, pid, timeout = a[0], int(a[1]), float(a[2])
    end = time.time() + timeout
    while running(pid) and time.time() < end:
        ps = peers(rd) or []
        used = [p["addr"] for p in ps if p["in_use"] > 0]
        if used:
            print("%.6f" % time.time(), " ".join(used))
            sys.exit(0)
        time.sleep(0.01)
    sys.exit(1)

elif cmd == "plan-reducer":
    # ERR JOB_PID TIMEOUT: wait until the job's log shows its relay plan;
    # print the time it was seen and C11's reducer's address. Exit 1 if the
    # job ended (or TIMEOUT passed) first.
    err, pid, timeout = a[0], int(a[1]), float(a[2])
    end = time.time() + timeout
    while running(pid) and time.time() < end:
        try:
            text = open(err, errors="replace").read()
        except OSError:
            text = ""
        m = re.search(r"relay: plans out.*?C11=slot\d+@(\S+)", text)
        if m:
            print("%.6f" % time.time(), m.group(1))
            sys.exit(0)
        time.sleep(0.01)
    sys.exit(1)

elif cmd == "predict":
    # RD RANK LEASE: the worker the next lease of LEASE slots takes in place
    # RANK (0 = first; taken modulo LEASE), as "HOST ADDR". The tracker's
    # order: not on probation (slow = 0), least in_use, least leases_total,
    # lowest id.
    ps = peers(a[0])
    if not ps:
        sys.exit(1)
    free = [p for p in ps if p["state"] == "alive" and p["in_use"] < p["slots"]]
    free.sort(key=lambda p: (p.get("slow", 0) > 0, p["in_use"], p["leases_total"], p["peer_id"]))
    p = free[int(a[1]) % min(int(a[2]), len(free))]
    print(host(p["addr"]), p["addr"])

elif cmd == "job":
    # FILE: one line for a job's JSON (exit 1 if there is none).
    d = load(a[0])
    if not d:
        sys.exit(1)
    s = "total_s=%.3f retries=%s failures=%d" % (d["total_s"], d["retries"], len(d["failures"]))
    if d.get("hedges") is not None:
        s += " hedges=%d" % len(d["hedges"])
    print(s)

elif cmd == "total":
    print(load(a[0])["total_s"])

elif cmd == "elapsed":
    print("%.2f" % (float(a[1]) - float(a[0])))

elif cmd == "in-report":
    # FILE ADDR: where ADDR shows in the job's report ("" if nowhere).
    d, addr = load(a[0]), a[1]
    if not d:
        sys.exit(0)
    where = ["product " + p["product"] for p in d["peers"] if p["addr"] == addr]
    # A failure reads "M3 on peer 8 (ADDR): REASON"; keep the reason, which
    # tells whether the cut hit before the handshake or mid-product.
    where += ["failure: " + str(f).split("): ", 1)[-1] for f in d["failures"] if addr in str(f)]
    # A hedge of its product: "hedged M3 (sending 0% in 0.21 s: ...), hedge used".
    where += ["hedged %s (%s), %s used" % (h["product"], h["reason"], h["winner"])
              for h in d.get("hedges", []) if h["slow_peer"]["addr"] == addr]
    print(", ".join(where))

elif cmd == "partition":
    # ROWS N WORKERS: the part's result line, and its summary row (fd 3).
    rs, n, w = rows(a[0]), a[1], a[2]
    h, c = totals(rs, "healthy"), totals(rs, "cut")
    if not h or not c:
        print("partition: not enough jobs (healthy %d, cut %d) for a result" % (len(h), len(c)))
        os.write(3, ("| partition n=%s, %s workers: one leased worker cut | no result (healthy %d, cut %d jobs) | | \u2718 |\n" % (n, w, len(h), len(c))).encode())
        sys.exit(0)
    hm, cm = statistics.median(h), statistics.median(c)
    bound = 1.3 * hm + 5
    print("healthy median %s s (%d jobs), cut median %s s (%d jobs): ratio %.2f\u00d7; "
          "bound 1.3\u00d7%s+5 = %s s %s; slowest cut %s s %s"
          % (fmt(hm), len(h), fmt(cm), len(c), cm / hm, fmt(hm), fmt(bound), mark(cm <= bound),
             fmt(max(c)), mark(max(c) <= bound)))
    os.write(3, ("| partition n=%s, %s workers: one leased worker cut | %s s vs %s s healthy (%.2f\u00d7) | cut median \u2264 1.3\u00d7healthy+5 s = %s s | %s |\n"
                 % (n, w, fmt(cm), fmt(hm), cm / hm, fmt(bound), mark(cm <= bound))).encode())

elif cmd == "straggler":
    rs, n, w, slow = rows(a[0]), a[1], a[2], a[3]
    h, s = totals(rs, "healthy"), totals(rs, "slowed")
    if not h or not s:
        print("straggler: not enough jobs (healthy %d, slowed %d) for a result" % (len(h), len(s)))
        os.write(3, ("| straggler n=%s, %s workers, one at %s | no result (healthy %d, slowed %d jobs) | | \u2718 |\n" % (n, w, slow, len(h), len(s))).encode())
        sys.exit(0)
    hm, sm, sx = statistics.median(h), statistics.median(s), max(s)
    print("healthy median %s s (%d jobs), slowed median %s s, slowest %s s (%d jobs): "
          "median %.2f\u00d7 (goal \u2264 1.3\u00d7) %s, slowest %.2f\u00d7 (goal \u2264 1.6\u00d7) %s"
          % (fmt(hm), len(h), fmt(sm), fmt(sx), len(s), sm / hm, mark(sm / hm <= 1.3),
             sx / hm, mark(sx / hm <= 1.6)))
    os.write(3, ("| straggler n=%s, %s workers, one leased worker at %s: median | %s s vs %s s healthy (%.2f\u00d7) | \u2264 1.3\u00d7 | %s |\n"
                 % (n, w, slow, fmt(sm), fmt(hm), sm / hm, mark(sm / hm <= 1.3))).encode())
    os.write(3, ("| straggler: slowest job | %s s (%.2f\u00d7) | \u2264 1.6\u00d7 | %s |\n"
                 % (fmt(sx), sx / hm, mark(sx / hm <= 1.6))).encode())

elif cmd == "bound":
    # ROWS N WORKERS RATE JSON...: healthy jobs against bytes_sent / RATE.
    rs, n, w, rate = rows(a[0]), a[1], a[2], a[3]
    bps = rate_bytes(rate)
    ratios, bounds = [], []
    for path in a[4:]:
        d = load(path)
        if not d:
            continue
        b = d["bytes_sent"] / bps
        bounds.append(b)
        ratios.append(d["total_s"] / b)
        print("  %-10s total_s=%.3f bytes_sent=%d link bound %.3f s ratio %.2f\u00d7"
              % (os.path.basename(path)[:-5], d["total_s"], d["bytes_sent"], b, d["total_s"] / b))
    if not ratios:
        print("bound: no healthy jobs for a result")
        os.write(3, ("| link bound n=%s | no result | | \u2718 |\n" % n).encode())
        sys.exit(0)
    r, h = statistics.median(ratios), statistics.median(totals(rs, "healthy"))
    b = statistics.median(bounds)
    print("healthy median %s s vs link bound %s s (bytes_sent / %s = %g B/s): median ratio %.2f\u00d7 (goal \u2264 1.25\u00d7) %s"
          % (fmt(h), "%.3f" % b, rate, bps, r, mark(r <= 1.25)))
    os.write(3, ("| link bound n=%s, %s workers: healthy vs bytes_sent / %s | %s s vs %.3f s (%.2f\u00d7) | \u2264 1.25\u00d7 | %s |\n"
                 % (n, w, rate, fmt(h), b, r, mark(r <= 1.25))).encode())

elif cmd == "relay-table":
    # DIR JOBS N RATE: the relayed and direct jobs' medians, bytes, and
    # times over the link bound (2 n^2 w at RATE).
    d, jobs, n, rate = a[0], int(a[1]), int(a[2]), a[3]
    relay, direct = runs(d, "relay", jobs), runs(d, "direct", jobs)
    if not relay or not direct:
        print(f"  relay: {len(relay)} relayed and {len(direct)} direct jobs finished; no table")
        sys.exit(0)
    w = 8.0
    bound = 2 * n * n * w / rate_bytes(rate)
    r = statistics.median(j["total_s"] for j in relay)
    dd = statistics.median(j["total_s"] for j in direct)
    plans = sorted({j["plan"] for j in relay})
    sent = statistics.median(j["bytes_sent"] for j in relay) / (n * n * w)
    recv = statistics.median(j["bytes_received"] for j in relay) / (n * n * w)
    dsent = statistics.median(j["bytes_sent"] for j in direct) / (n * n * w)
    print(f"  relay median {r:.2f} s, direct median {dd:.2f} s: relay {dd / r:.2f}x faster; plans {plans}")
    print(f"  relay / (2 n^2 w at {rate} = {bound:.2f} s) = {r / bound:.2f}x; direct / that bound = {dd / bound:.2f}x")
    print(f"  relay bytes: sent {sent:.3f} n^2 w, received {recv:.3f} n^2 w (direct sent {dsent:.3f} n^2 w)")

elif cmd == "fresh-at":
    # RD IP OLD TIMEOUT: the address of the peer at IP that registered
    # after peer id OLD (-1: any), once it is alive and no other peer at IP
    # is ("" if none within TIMEOUT s).
    rd, ip, old, timeout = a[0], a[1], int(a[2]), float(a[3])
    end = time.time() + timeout
    while time.time() < end:
        at = [p for p in (peers(rd) or []) if p["addr"].split(":")[0] == ip and p["state"] == "alive"]
        if len(at) == 1 and at[0]["peer_id"] > old:
            print(at[0]["addr"], at[0]["peer_id"])
            sys.exit(0)
        time.sleep(0.2)
    print("")

elif cmd == "liar-table":
    # DIR JOBS N: the liar jobs that counted (liarI.json with a COUNTED
    # file beside) against the healthy jobs after them.
    d, jobs, n = a[0], int(a[1]), int(a[2])
    counted = [i for i in range(1, jobs + 1) if os.path.exists(f"{d}/liar{i}.counted")]
    liar = [j for j in (load(f"{d}/liar{i}.json") for i in counted) if j]
    healthy = runs(d, "healthy", jobs)
    if not liar or not healthy:
        print(f"  liar: {len(liar)} counted liar jobs and {len(healthy)} healthy jobs finished; no table")
        sys.exit(0)
    lm = statistics.median(j["total_s"] for j in liar)
    hm = statistics.median(j["total_s"] for j in healthy)
    how = sorted({j["plan"] + (", moved" if (j.get("relay") or {}).get("moved") else "") for j in liar})
    sent = statistics.median(j["bytes_sent"] for j in liar) / (n * n * 8.0)
    print(f"  liar median {lm:.2f} s ({len(liar)} jobs: {', '.join(fmt(j['total_s']) for j in liar)}), "
          f"healthy median {hm:.2f} s: liar / healthy = {lm / hm:.2f}x; liar jobs {how}, sent {sent:.3f} n^2 w")

elif cmd == "first-table":
    # DIR GRIDS: per fresh grid, its first job's total_s over its second's.
    d, grids = a[0], int(a[1])
    ratios = []
    for g in range(1, grids + 1):
        one, two = load(f"{d}/g{g}-1.json"), load(f"{d}/g{g}-2.json")
        if one and two:
            ratios.append(one["total_s"] / two["total_s"])
            print(f"  grid {g}: first {one['total_s']:.2f} s, second {two['total_s']:.2f} s: {ratios[-1]:.2f}x"
                  f" (plans {one['plan']}, {two['plan']})")
    if not ratios:
        print("  first: no grid ran both jobs; no table")
        sys.exit(0)
    m = statistics.median(ratios)
    print(f"  first / second job, median of {len(ratios)} grids: {m:.2f}x (worst {max(ratios):.2f}x) {mark(m <= 1.2)}")

elif cmd == "depth-table":
    # DIR JOBS N: depth 1 against depth 2, medians of the jobs' own time,
    # and depth 2's bytes.
    d, jobs, n = a[0], int(a[1]), int(a[2])
    one, two = runs(d, "d1-", jobs), runs(d, "d2-", jobs)
    if not one or not two:
        print(f"  depth: {len(one)} jobs at depth 1 and {len(two)} at depth 2 finished; no table")
        sys.exit(0)
    w = 8.0
    m1 = statistics.median(j["job_s"] for j in one)
    m2 = statistics.median(j["job_s"] for j in two)
    sent = statistics.median(j["bytes_sent"] for j in two) / (n * n * w)
    recv = statistics.median(j["bytes_received"] for j in two) / (n * n * w)
    print(f"  depth 1 median {m1:.2f} s, depth 2 median {m2:.2f} s: depth 2 / depth 1 = {m2 / m1:.2f}x")
    print(f"  depth 2 bytes: sent {sent:.3f} n^2 w, received {recv:.3f} n^2 w; failures {sum(len(j['failures']) for j in two)}")
EOF
py() { python3 -c "$PY" "$@"; }

# --- grids and cleanup ---------------------------------------------------------
GRIDS=()
JOB_PID=
cleanup() {
  local rd part
  [[ -n $JOB_PID ]] && kill "$JOB_PID" 2>/dev/null
  for rd in "${GRIDS[@]}"; do
    [[ -f $rd/env ]] || continue
    part=${rd##*/grid-}
    mkdir -p "$OUT/$part/logs" && cp "$rd"/*.log "$OUT/$part/logs/" 2>/dev/null
    scripts/netgrid.sh --run-dir "$rd" down >/dev/null 2>&1 || echo "netbench: could not take down the grid in $rd" >&2
  done
  GRIDS=()
}
trap cleanup EXIT
trap 'echo "netbench: interrupted" >&2; exit 130' INT
trap 'echo "netbench: terminated" >&2; exit 143' TERM

# grid_up PART WORKERS: build the part's grid; sets G (the netgrid command) and RD.
grid_up() {
  RD=$OUT/grid-$1
  G="scripts/netgrid.sh --run-dir $RD"
  GRIDS+=("$RD")
  if ! $G up "$2" "$RATE" >"$OUT/$1/up.log" 2>&1; then
    echo "netbench: $1: netgrid up failed:" >&2
    cat "$OUT/$1/up.log" >&2
    return 1
  fi
  # netgrid up does not fail when workers are missing: check they all joined.
  local msg
  if ! msg=$(py wait-idle "$RD" "$2" 15); then
    echo "netbench: $1: $msg" >&2
    return 1
  fi
}
grid_down() {
  cleanup
}

# job PART NAME N [&]: one multiply from the requester; JSON in OUT/PART/NAME.json.
job() {
  $G exec rq septet multiply --random "$3,$3,$3" --json --max-wait 20 \
    >"$OUT/$1/$2.json" 2>"$OUT/$1/$2.err"
}
# describe PART NAME: the job's one-line summary (or its error).
describe() {
  py job "$OUT/$1/$2.json" 2>/dev/null || echo "no JSON: $(tail -n 2 "$OUT/$1/$2.err" | tr '\n' ' ')"
}
# record PART KIND IDX NAME COUNTED: a row for the statistics.
record() {
  local t
  t=$(py total "$OUT/$1/$4.json" 2>/dev/null) || return 0
  printf '%s\t%s\t%s\t%s\n' "$2" "$3" "$t" "$5" >>"$OUT/$1/rows.tsv"
}
idle() {
  local msg
  msg=$(py wait-idle "$RD" "$1" 30) || echo "  (warning: $msg)"
}
secs() { echo "${EPOCHREALTIME%.*}"; }
# table_row PART CMD LABEL GOAL ARGS...: the part's table (py CMD
# OUT/PART ARGS...), kept in OUT/PART/table.md, and its first line as the
# part's row of the summary.
table_row() {
  local part=$1 cmd=$2 label=$3 goal=$4 r
  shift 4
  py "$cmd" "$OUT/$part" "$@" | tee -a "$OUT/$part/table.md"
  r=$(sed -n 1p "$OUT/$part/table.md")
  echo "| $label | ${r#  } | $goal | |" >&3
}
# part_done PART T0: take the part's grid down and say how long it took.
part_done() {
  grid_down
  TOOK[$1]=$(($(secs) - $2))
  echo "  ($1 took ${TOOK[$1]} s)"
}
# host_of ADDR: netgrid's host name for a worker address (w<last octet - 10>).
host_of() { local a=${1%:*}; echo "w$((${a##*.} - 10))"; }

: >"$OUT/summary.md"
exec 3>>"$OUT/summary.md"
declare -A TOOK

# --- header --------------------------------------------------------------------
echo "netbench: septet namespace-grid measurements ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo "machine: nproc=$(nproc) kernel=$(uname -r) $(uname -m)"
echo "binary:  $SEPTET_BIN ($("$SEPTET_BIN" --version 2>/dev/null))"
echo "setup:   links $RATE, JOBS=$JOBS per kind${QUICK:+ (--quick)}, parts: ${PARTS[*]}"
echo "output:  $OUT (job JSON, stderr, grid logs)"

# --- 1. partition ----------------------------------------------------------------
if want partition; then
  t0=$(secs)
  mkdir -p "$OUT/partition"
  echo
  if [[ $CUT_ROLE == reducer ]]; then
    # (The plan's roles are in the requester's log, at info.)
    export RUST_LOG=septet_client=info
    echo "== partition: n=$P_N f64, $P_WORKERS workers at $RATE; C11's reducer cut ${CUT_DELAY}s after the plan is out, healed after the job =="
  else
    echo "== partition: n=$P_N f64, $P_WORKERS workers at $RATE; a leased worker cut ${CUT_DELAY}s after the lease is seen, healed after the job =="
  fi
  if grid_up partition "$P_WORKERS"; then
    job partition warmup "$P_N"
    echo "  warm-up   $(describe partition warmup) (not counted)"
    for ((i = 1; i <= JOBS; i++)); do
      idle "$P_WORKERS"
      job partition "healthy$i" "$P_N"
      echo "  healthy $i $(describe partition "healthy$i")"
      record partition healthy "$i" "healthy$i" 1
    done
    for ((i = 1; i <= JOBS; i++)); do
      idle "$P_WORKERS"
      s=$EPOCHREALTIME
      job partition "cut$i" "$P_N" &
      JOB_PID=$!
      if [[ $CUT_ROLE == reducer ]]; then
        used=$(py plan-reducer "$OUT/partition/cut$i.err" "$JOB_PID" 30)
      else
        used=$(py lease-watch "$RD" "$JOB_PID" 30)
      fi
      if [[ -n $used ]]; then
        seen_t=${used%% *}
        victim=${used##* }
        sleep "$CUT_DELAY"
        h=$(host_of "$victim")
        $G cut "$h" >/dev/null
        c=$EPOCHREALTIME
        wait "$JOB_PID"; rc=$?; JOB_PID=
        $G heal "$h" >/dev/null
        echo "  cut $i     $(describe partition "cut$i") rc=$rc; lease seen at +$(py elapsed "$s" "$seen_t")s, cut $h at +$(py elapsed "$s" "$c")s ($(py in-report "$OUT/partition/cut$i.json" "$victim"))"
        record partition cut "$i" "cut$i" 1
      else
        wait "$JOB_PID"; JOB_PID=
        echo "  cut $i     $(describe partition "cut$i") — the job ended before a lease was seen: nothing cut, not counted"
      fi
    done
    echo "  $(py partition "$OUT/partition/rows.tsv" "$P_N" "$P_WORKERS" 2>&1)"
  else
    echo "| partition n=$P_N | grid failed | | ✘ |" >&3
  fi
  grid_down
  TOOK[partition]=$(($(secs) - t0))
  echo "  (partition took ${TOOK[partition]} s)"
fi

# --- 2. straggler, 3. link bound ---------------------------------------------------
if want straggler || want bound; then
  t0=$(secs)
  mkdir -p "$OUT/straggler"
  echo
  if want straggler; then
    echo "== straggler: n=$S_N f64, $S_WORKERS workers at $RATE; healthy jobs, then jobs with one leased worker's link at $SLOW_RATE =="
  else
    echo "== healthy jobs for the link bound: n=$S_N f64, $S_WORKERS workers at $RATE =="
  fi
  healthy=()
  if grid_up straggler "$S_WORKERS"; then
    job straggler warmup "$S_N"
    echo "  warm-up   $(describe straggler warmup) (not counted)"
    for ((i = 1; i <= JOBS; i++)); do
      idle "$S_WORKERS"
      job straggler "healthy$i" "$S_N"
      echo "  healthy $i $(describe straggler "healthy$i")"
      record straggler healthy "$i" "healthy$i" 1
      healthy+=("$OUT/straggler/healthy$i.json")
    done
    if want straggler; then
      counted=0
      for ((i = 1; counted < JOBS && i <= 2 * JOBS; i++)); do
        idle "$S_WORKERS"
        if ! read -r h addr < <(py predict "$RD" $((i - 1)) "$LEASE"); then
          echo "  slowed $i  could not read the peer table; skipped"
          continue
        fi
        $G shape "$h" "$SLOW_RATE" >/dev/null
        job straggler "slowed$i" "$S_N" &
        JOB_PID=$!
        if used=$(py lease-watch "$RD" "$JOB_PID" 30); then
          case " $used " in
            *" $addr "*) seen=yes ;;
            *) seen=no ;;
          esac
        else
          seen=unseen
        fi
        wait "$JOB_PID"; rc=$?; JOB_PID=
        $G shape "$h" "$RATE" >/dev/null
        where=$(py in-report "$OUT/straggler/slowed$i.json" "$addr")
        if [[ $seen == yes || -n $where ]]; then
          ok=1
          counted=$((counted + 1))
          verdict="$h leased (tracker: $seen; report: ${where:-absent})"
        else
          ok=0
          verdict="$h NOT leased (tracker: $seen; report: absent) — not counted"
        fi
        echo "  slowed $i  $(describe straggler "slowed$i") rc=$rc; $verdict"
        record straggler slowed "$i" "slowed$i" "$ok"
      done
      echo "  $(py straggler "$OUT/straggler/rows.tsv" "$S_N" "$S_WORKERS" "$SLOW_RATE" 2>&1)"
    fi
    if want bound; then
      echo
      echo "== link bound: the healthy n=$S_N jobs vs bytes_sent / $RATE (the requester's link) =="
      py bound "$OUT/straggler/rows.tsv" "$S_N" "$S_WORKERS" "$RATE" "${healthy[@]}" 2>&1 | sed 's/^\([^ ]\)/  \1/'
    fi
  else
    want straggler && echo "| straggler n=$S_N | grid failed | | ✘ |" >&3
    want bound && echo "| link bound n=$S_N | grid failed | | ✘ |" >&3
  fi
  grid_down
  TOOK[straggler]=$(($(secs) - t0))
  echo "  (straggler/bound took ${TOOK[straggler]} s)"
fi

# --- 4. relay ---------------------------------------------------------------------
if want relay; then
  t0=$(secs)
  mkdir -p "$OUT/relay"
  echo
  echo "== relay: n=$R_N, $R_WORKERS workers at $RATE, $JOBS relayed and $JOBS direct jobs, interleaved =="
  if grid_up relay "$R_WORKERS"; then
    $G exec rq septet multiply --random "$R_N,$R_N,$R_N" --json --max-wait 20 >/dev/null 2>&1 # warm-up
    for i in $(seq 1 "$JOBS"); do
      for plan in relay direct; do
        extra=()
        [[ $plan == direct ]] && extra=(--plan direct)
        $G exec rq septet multiply --random "$R_N,$R_N,$R_N" --json --max-wait 20 "${extra[@]}" \
          >"$OUT/relay/$plan$i.json" 2>"$OUT/relay/$plan$i.err"
        echo "  $plan $i  $(describe relay "$plan$i")"
        idle "$R_WORKERS"
      done
    done
    table_row relay relay-table "relay n=$R_N at $RATE" "see issue 16" "$JOBS" "$R_N" "$RATE"
  else
    echo "| relay n=$R_N | grid failed | | ✘ |" >&3
  fi
  part_done relay "$t0"
fi

# --- 5. first jobs -------------------------------------------------------------
if want first; then
  t0=$(secs)
  mkdir -p "$OUT/first"
  echo
  echo "== first jobs: n=$F_N, $F_WORKERS workers at $RATE, $JOBS fresh grids, two jobs each =="
  for g in $(seq 1 "$JOBS"); do
    if grid_up first "$F_WORKERS"; then
      for i in 1 2; do
        $G exec rq septet multiply --random "$F_N,$F_N,$F_N" --json --max-wait 20 \
          >"$OUT/first/g$g-$i.json" 2>"$OUT/first/g$g-$i.err"
        echo "  grid $g job $i  $(describe first "g$g-$i")"
        idle "$F_WORKERS"
      done
    else
      echo "  grid $g failed"
    fi
    grid_down
  done
  py first-table "$OUT/first" "$JOBS" | tee -a "$OUT/first/table.md"
  r=$(tail -n 1 "$OUT/first/table.md")
  echo "| first ÷ second job n=$F_N at $RATE | ${r#  } | ≤ 1.2× | |" >&3
  TOOK[first]=$(($(secs) - t0))
  echo "  (first took ${TOOK[first]} s)"
fi

# --- 6. a liar ------------------------------------------------------------------
if want liar; then
  t0=$(secs)
  mkdir -p "$OUT/liar"
  echo
  echo "== liar: n=$L_N, $L_WORKERS workers at $RATE; $JOBS rounds: w0 restarted with --fault=corrupt, a job with it, a healthy job after =="
  if ! "$SEPTET_BIN" worker --fault=corrupt --help >/dev/null 2>&1; then
    echo "  $SEPTET_BIN has no --fault (build with --features fault-injection); skipped"
    echo "| liar n=$L_N | no fault injection in the binary | | ✘ |" >&3
  elif grid_up liar "$L_WORKERS"; then
    job liar warmup "$L_N"
    echo "  warm-up   $(describe liar warmup) (not counted)"
    w0_ip=$($G status | awk '$1=="w0"{print $3}')
    old_id=-1
    for i in $(seq 1 "$JOBS"); do
      $G restart w0 --fault=corrupt >/dev/null
      read -r liar_addr old_id < <(py fresh-at "$RD" "$w0_ip" "$old_id" 20)
      [[ -n $liar_addr ]] || { echo "  liar $i    the restarted w0 did not register; skipped"; old_id=-1; continue; }
      idle "$L_WORKERS"
      job liar "liar$i" "$L_N"
      where=$(py in-report "$OUT/liar/liar$i.json" "$liar_addr")
      if [[ -n $where ]]; then
        touch "$OUT/liar/liar$i.counted"
        echo "  liar $i    $(describe liar "liar$i"); the liar: $where"
      else
        echo "  liar $i    $(describe liar "liar$i"); the liar ($liar_addr) was not leased — not counted"
      fi
      idle "$L_WORKERS"
      job liar "healthy$i" "$L_N"
      echo "  healthy $i $(describe liar "healthy$i")"
      idle "$L_WORKERS"
    done
    table_row liar liar-table "liar n=$L_N at $RATE" "(issue 16: only its work again)" "$JOBS" "$L_N"
  else
    echo "| liar n=$L_N | grid failed | | ✘ |" >&3
  fi
  part_done liar "$t0"
fi

# --- 7. depth --------------------------------------------------------------------
if want depth; then
  t0=$(secs)
  mkdir -p "$OUT/depth"
  echo
  echo "== depth: n=$D_N, $D_WORKERS workers at $RATE, $JOBS jobs at --depth 1 and $JOBS at --depth 2, interleaved =="
  # No warm-up: 49 workers would set aside 240 MiB each (--warm-up 4096)
  # on this one host; the warm-up jobs below are not counted anyway.
  if NETGRID_WORKER_ARGS="--threads 1 --warm-up 0" grid_up depth "$D_WORKERS"; then
    for d in 1 2; do # warm-up, one per depth
      $G exec rq septet multiply --random "$D_N,$D_N,$D_N" --json --max-wait 60 --depth $d >/dev/null 2>&1
    done
    for i in $(seq 1 "$JOBS"); do
      for d in 1 2; do
        $G exec rq septet multiply --random "$D_N,$D_N,$D_N" --json --max-wait 60 --depth $d \
          >"$OUT/depth/d$d-$i.json" 2>"$OUT/depth/d$d-$i.err"
        echo "  depth $d $i  $(describe depth "d$d-$i")"
        idle "$D_WORKERS"
      done
    done
    table_row depth depth-table "depth n=$D_N at $RATE" "(issue 20: no goal on one host)" "$JOBS" "$D_N"
  else
    echo "| depth n=$D_N | grid failed | | ✘ |" >&3
  fi
  part_done depth "$t0"
fi

# --- summary ---------------------------------------------------------------------
exec 3>&-
echo
echo "== summary: $("$SEPTET_BIN" --version 2>/dev/null) ($SEPTET_BIN), nproc=$(nproc), links $RATE${QUICK:+, --quick} =="
echo "| measurement | result | goal | |"
echo "|---|---|---|---|"
cat "$OUT/summary.md"
