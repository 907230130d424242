#!/usr/bin/env bash
# netgrid.sh: a septet grid of network namespaces on one bridge, by hand.
#
# Every host (tracker "tr", requester "rq", a spare client "cl", workers
# "w0".."wN-1") is a network namespace with one veth link to a bridge that
# lives in its own "switch" namespace, so the host's root namespace
# networking is never touched. Each link is shaped with tbf on both ends.
# State (namespace names, addresses, the secret, pids, logs) lives in a run
# directory; `down` removes everything `up` made.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/netgrid.sh [--run-dir DIR] COMMAND [ARGS...]

Commands:
  up N_WORKERS [RATE]   Build the grid (RATE for every link, default 1gbit),
                        start the tracker and N workers in their namespaces.
  cut HOST              Take HOST's link down (its switch-side veth).
  heal HOST             Bring HOST's link back up.
  shape HOST RATE       Reshape HOST's link (both ends) to RATE, e.g. 40mbit.
  restart wN [ARGS...]  Stop worker wN and start it again with ARGS added
                        to its command line (e.g. --fault=corrupt, with a
                        binary built with the fault-injection feature). It
                        registers afresh: a new peer id, no leases yet.
  exec HOST CMD...      Run CMD inside HOST's namespace. The environment has
                        SEPTET_TRACKER and SEPTET_SECRET_FILE set, and
                        SEPTET_BIN (the septet binary), so e.g.
                          scripts/netgrid.sh exec rq septet peers
                        works ("septet" as CMD is replaced by SEPTET_BIN).
  status                Print hosts, addresses, link states and processes.
  down                  Kill every process in the grid, delete its namespaces
                        and the run directory.

HOST is tr (tracker), rq (requester), cl (a second client) or w0, w1, ...

Options:
  --run-dir DIR   State directory (default: $NETGRID_RUN_DIR or
                  /tmp/septet-netgrid). One grid per run directory.
  -h, --help      This help.

Environment:
  SEPTET_BIN        septet binary (default: target/release/septet if it
                    exists, else target/debug/septet).
  NETGRID_TRACKER_ARGS  Extra arguments for `septet tracker` (e.g.
                    "--lease-ttl 3").
  NETGRID_WORKER_ARGS   Extra arguments for `septet worker` (default
                    "--threads 1").

Needs root, ip(8) and tc(8) with netns support. Links are shaped with tbf
(bandwidth only; netem is not assumed).
EOF
}

die() {
  echo "netgrid: $*" >&2
  exit 1
}

RUN_DIR=${NETGRID_RUN_DIR:-/tmp/septet-netgrid}
while [[ $# -gt 0 ]]; do
  case $1 in
    --run-dir)
      [[ $# -ge 2 ]] || die "--run-dir needs a directory"
      RUN_DIR=$2
      shift 2
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || {
  usage >&2
  exit 2
}
CMD=$1
shift

REPO=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z ${SEPTET_BIN:-} ]]; then
  if [[ -x $REPO/target/release/septet ]]; then
    SEPTET_BIN=$REPO/target/release/septet
  else
    SEPTET_BIN=$REPO/target/debug/septet
  fi
fi

# --- state -----------------------------------------------------------------

load() {
  [[ -f $RUN_DIR/env ]] || die "no grid in $RUN_DIR (run \`up\` first)"
  # shellcheck source=/dev/null
  source "$RUN_DIR/env"
}

# Namespace of a host name, and its address.
ns_of() { echo "${PREFIX}-$1"; }
addr_of() {
  local host=$1
  case $host in
    tr) echo "${NET}.1" ;;
    rq) echo "${NET}.2" ;;
    cl) echo "${NET}.3" ;;
    w[0-9]*)
      local i=${host#w}
      [[ $i =~ ^[0-9]+$ ]] && ((i < WORKERS)) || die "no such worker: $host"
      echo "${NET}.$((10 + i))"
      ;;
    *) die "unknown host: $host (tr, rq, cl, w0..w$((WORKERS - 1)))" ;;
  esac
}
hosts() {
  local i
  echo tr rq cl
  for ((i = 0; i < WORKERS; i++)); do echo "w$i"; done
}

shape_link() {
  # shape NS DEV RATE: a tbf root qdisc (replaced if there is one).
  local ns=$1 dev=$2 rate=$3
  ip netns exec "$ns" tc qdisc replace dev "$dev" root tbf rate "$rate" burst 256kb latency 50ms
}

# --- commands --------------------------------------------------------------

cmd_down() {
  [[ -f $RUN_DIR/env ]] || {
    echo "netgrid: nothing to take down in $RUN_DIR"
    return 0
  }
  # shellcheck source=/dev/null
  source "$RUN_DIR/env"
  local ns pid
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^${PREFIX}-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
      kill -TERM "$pid" 2>/dev/null || true
    done
  done
  sleep 0.5
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^${PREFIX}-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
      kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$RUN_DIR"
  echo "netgrid: down ($PREFIX)"
}

cmd_up() {
  [[ $# -ge 1 && $1 =~ ^[0-9]+$ && $1 -ge 1 ]] || die "up needs N_WORKERS (>= 1)"
  local workers=$1 rate=${2:-1gbit}
  [[ $(id -u) -eq 0 ]] || die "needs root"
  command -v ip >/dev/null || die "needs ip(8)"
  command -v tc >/dev/null || die "needs tc(8)"
  [[ -x $SEPTET_BIN ]] || die "no septet binary at $SEPTET_BIN (cargo build, or set SEPTET_BIN)"
  [[ ! -e $RUN_DIR/env ]] || die "a grid is already up in $RUN_DIR (\`down\` it first)"
  mkdir -p "$RUN_DIR"
  RUN_DIR=$(cd "$RUN_DIR" && pwd)

  # Unique names per run: a crashed run's leftovers never collide.
  local id=$$
  PREFIX="sgn${id}x$((RANDOM % 1000))"
  NET="10.$((200 + id % 50)).$((id / 50 % 250))"
  WORKERS=$workers
  if ip -br addr | grep -q " ${NET}\."; then
    die "the host already uses ${NET}.0/24; try again"
  fi
  cat >"$RUN_DIR/env" <<EOF
PREFIX=$PREFIX
NET=$NET
WORKERS=$WORKERS
RATE=$rate
SEPTET_BIN=$SEPTET_BIN
EOF
  # From here on, a failure (or Ctrl-C) takes the half-built grid down.
  UP_DONE=
  trap '[[ -n $UP_DONE ]] || { echo "netgrid: up failed, cleaning up" >&2; cmd_down >&2; }' EXIT

  local sw
  sw=$(ns_of sw)
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  ip -n "$sw" link add br0 type bridge
  ip -n "$sw" link set br0 up
  local host ns
  for host in $(hosts); do
    ns=$(ns_of "$host")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # The pair is created in the switch namespace with its peer straight in
    # the host's: nothing ever appears in the root namespace.
    ip -n "$sw" link add "v-$host" type veth peer name eth0 netns "$ns"
    ip -n "$sw" link set "v-$host" master br0
    ip -n "$sw" link set "v-$host" up
    ip -n "$ns" addr add "$(addr_of "$host")/24" dev eth0
    ip -n "$ns" link set eth0 up
    shape_link "$sw" "v-$host" "$rate"
    shape_link "$ns" eth0 "$rate"
  done

  "$SEPTET_BIN" secret --out "$RUN_DIR/secret" >/dev/null 2>&1
  local tracker
  tracker="$(addr_of tr):7700"
  echo "TRACKER=$tracker" >>"$RUN_DIR/env"
  echo "SECRET=$RUN_DIR/secret" >>"$RUN_DIR/env"

  local -a targs wargs
  read -r -a targs <<<"${NETGRID_TRACKER_ARGS:-}"
  read -r -a wargs <<<"${NETGRID_WORKER_ARGS:---threads 1}"
  setsid ip netns exec "$(ns_of tr)" "$SEPTET_BIN" tracker --listen "$tracker" \
    --secret-file "$RUN_DIR/secret" "${targs[@]}" >"$RUN_DIR/tr.log" 2>&1 &
  echo $! >"$RUN_DIR/tr.pid"
  sleep 0.3
  local i
  for ((i = 0; i < workers; i++)); do
    host=w$i
    setsid ip netns exec "$(ns_of "$host")" "$SEPTET_BIN" worker --tracker "$tracker" \
      --listen "$(addr_of "$host"):0" --secret-file "$RUN_DIR/secret" "${wargs[@]}" \
      >"$RUN_DIR/$host.log" 2>&1 &
    echo $! >"$RUN_DIR/$host.pid"
  done
  UP_DONE=1

  # Wait (up to 15 s) until every worker is in the peer table.
  local up=0 tries
  for ((tries = 0; tries < 75; tries++)); do
    up=$(ip netns exec "$(ns_of rq)" "$SEPTET_BIN" peers --tracker "$tracker" \
      --secret-file "$RUN_DIR/secret" --json 2>/dev/null | grep -c "\"state\": *\"alive\"") || up=0
    ((up >= workers)) && break
    sleep 0.2
  done
  echo "netgrid: up ($PREFIX): tracker $tracker, $workers workers ($up registered), links $rate"
  echo "netgrid: state in $RUN_DIR; try: $0 --run-dir $RUN_DIR exec rq septet peers"
}

link_set() {
  local host=$1 state=$2
  load
  addr_of "$host" >/dev/null
  ip -n "$(ns_of sw)" link set "v-$host" "$state"
  echo "netgrid: $host link $state"
}

cmd_shape() {
  [[ $# -eq 2 ]] || die "shape needs HOST RATE"
  load
  addr_of "$1" >/dev/null
  shape_link "$(ns_of sw)" "v-$1" "$2"
  shape_link "$(ns_of "$1")" eth0 "$2"
  echo "netgrid: $1 link shaped to $2"
}

cmd_restart() {
  [[ $# -ge 1 && $1 == w[0-9]* ]] || die "restart needs a worker, wN"
  load
  local host=$1 pid
  shift
  addr_of "$host" >/dev/null
  if [[ -f $RUN_DIR/$host.pid ]]; then
    pid=$(cat "$RUN_DIR/$host.pid")
    kill -TERM "$pid" 2>/dev/null || true
    # (Its listener and slots go with it; wait for the process, not a timer.)
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  local -a wargs
  read -r -a wargs <<<"${NETGRID_WORKER_ARGS:---threads 1}"
  setsid ip netns exec "$(ns_of "$host")" "$SEPTET_BIN" worker --tracker "$TRACKER" \
    --listen "$(addr_of "$host"):0" --secret-file "$SECRET" "${wargs[@]}" "$@" \
    >>"$RUN_DIR/$host.log" 2>&1 &
  echo $! >"$RUN_DIR/$host.pid"
  echo "netgrid: $host restarted${*:+ with $*}"
}

cmd_exec() {
  [[ $# -ge 2 ]] || die "exec needs HOST CMD..."
  load
  local host=$1
  shift
  addr_of "$host" >/dev/null
  [[ $1 == septet ]] && set -- "$SEPTET_BIN" "${@:2}"
  SEPTET_TRACKER=$TRACKER SEPTET_SECRET_FILE=$SECRET SEPTET_BIN=$SEPTET_BIN \
    exec ip netns exec "$(ns_of "$host")" "$@"
}

cmd_status() {
  load
  local host ns pid
  echo "grid $PREFIX: net $NET.0/24, tracker $TRACKER, $WORKERS workers, run dir $RUN_DIR"
  for host in $(hosts); do
    ns=$(ns_of "$host")
    pid="-"
    [[ -f $RUN_DIR/$host.pid ]] && pid=$(cat "$RUN_DIR/$host.pid")
    printf '%-4s %-16s %-16s link %-5s pid %s\n' "$host" "$ns" "$(addr_of "$host")" \
      "$(ip -n "$(ns_of sw)" -br link show "v-$host" | awk '{print $2}')" "$pid"
  done
}

case $CMD in
  up) cmd_up "$@" ;;
  down) cmd_down ;;
  cut)
    [[ $# -eq 1 ]] || die "cut needs HOST"
    link_set "$1" down
    ;;
  heal)
    [[ $# -eq 1 ]] || die "heal needs HOST"
    link_set "$1" up
    ;;
  shape) cmd_shape "$@" ;;
  restart) cmd_restart "$@" ;;
  exec) cmd_exec "$@" ;;
  status) cmd_status ;;
  *)
    usage >&2
    exit 2
    ;;
esac
