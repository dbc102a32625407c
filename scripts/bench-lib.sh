# shellcheck shell=bash
# Shared helpers of the scripts/bench* scripts. Sourced, not run. Starts release nodes on
# loopback with port 0, reads `PORT=` (and `CLUSTER_PORT=`) from their stdout, and stops every
# node it started, and every background load in BG_PIDS, when the calling script exits (trap
# set by bench_init).
#
# Variables the caller may set before bench_init: BENCH_NO_BUILD=1 (reuse the binaries),
# NODE_BIN (another node binary, e.g. an older build to compare with).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BUILT_NODE_BIN="$TARGET_DIR/release/topgun-node"
NODE_BIN="${NODE_BIN:-$BUILT_NODE_BIN}"
LOAD_BIN="$TARGET_DIR/release/topgun-load"
# JWT mode: the benchmark measures authenticated connections, as clients use them.
BENCH_SECRET="bench-secret-$$"
NODE_PIDS=()
# Background topgun-load runs of the calling script, stopped on exit like the nodes.
BG_PIDS=()

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

bench_init() {
  WORK="$(mktemp -d /tmp/topgun-bench.XXXXXX)"
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
    log "building release binaries (cargo build --release --bins)"
    (cd "$ROOT" && cargo build --release --bins --quiet)
  fi
  [[ -x "$NODE_BIN" && -x "$LOAD_BIN" ]] || { log "missing $NODE_BIN or $LOAD_BIN"; exit 1; }
}

bench_cleanup() {
  local pid
  for pid in "${BG_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${NODE_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${NODE_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  [[ -n "${WORK:-}" && "${BENCH_KEEP:-0}" != 1 ]] && rm -rf "$WORK"
  return 0
}

# start_node NAME BACKEND [node flags...]: sets NODE_PID, PORT and CLUSTER_PORT (the node-to-node
# port, port 0 unless the flags say otherwise). Connection gate limits are raised (thousands of
# bench connections); pass --connection-rate again to override. No drain: a stopped node closes
# its clients at once (--drain-delay-ms and --drain-spread-ms override).
start_node() {
  local name="$1" backend="$2"; shift 2
  local dir="$WORK/$name"
  mkdir -p "$dir"
  local gate=(--connection-rate 100000 --max-pending-connections 100000)
  [[ " $* " == *" --connection-rate "* ]] && gate=()
  env -i PATH="$PATH" HOME="${HOME:-/root}" \
    JWT_SECRET="$BENCH_SECRET" STORAGE_BACKEND="$backend" TOPGUN_DATA_DIR="$dir/data" \
    TOPGUN_CLUSTER_PORT=0 TOPGUN_DRAIN_DELAY_MS=0 TOPGUN_DRAIN_SPREAD_MS=0 \
    "$NODE_BIN" --port 0 --host 127.0.0.1 --log-dest "$dir/node.log" \
    "${gate[@]}" "$@" \
    >"$dir/stdout" 2>"$dir/stderr" </dev/null &
  NODE_PID=$!
  NODE_PIDS+=("$NODE_PID")
  PORT=""
  for _ in $(seq 150); do
    PORT="$(sed -n 's/^PORT=\([0-9]*\)$/\1/p' "$dir/stdout" | head -n1)"
    [[ -n "$PORT" ]] && break
    kill -0 "$NODE_PID" 2>/dev/null || { log "node $name exited: $(cat "$dir/stderr")"; exit 1; }
    sleep 0.1
  done
  [[ -n "$PORT" ]] || { log "node $name printed no PORT= within 15 s"; exit 1; }
  for _ in $(seq 150); do
    curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  # Printed right after PORT=, before the node serves HTTP: there by now if the node is up.
  # shellcheck disable=SC2034 # for the calling script
  CLUSTER_PORT="$(sed -n 's/^CLUSTER_PORT=\([0-9]*\)$/\1/p' "$dir/stdout" | head -n1)"
  log "node $name ($backend $*) pid $NODE_PID port $PORT"
}

stop_node() {
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# load OUT_JSON SCENARIO [flags...]: runs topgun-load against the current node, keeps its JSON
# in OUT_JSON, and logs a one-line digest.
load() {
  local out="$1"; shift
  load_at "ws://127.0.0.1:$PORT/ws" "$NODE_PID" "$out" "$@"
}

# load_at URLS PID OUT_JSON SCENARIO [flags...]: load against URLS (comma-separated ws:// URLs:
# connection i goes to URL i mod count), with the CPU of node PID measured.
load_at() {
  local urls="$1" pid="$2" out="$3"; shift 3
  log "topgun-load $*"
  "$LOAD_BIN" --url "$urls" --secret "$BENCH_SECRET" --pid "$pid" --json "$@" >"$out" \
    || log "topgun-load exited non-zero (see $out)"
  load_digest "$out"
}

# load_digest OUT_JSON: logs the one-line digest of a topgun-load JSON output (a placeholder
# error object if the run wrote nothing).
load_digest() {
  local out="$1"
  [[ -s "$out" ]] || echo '{"error":"no output"}' >"$out"
  jq -c '{scenario, connected, ops_per_sec, ack: .ack_latency.p99_ms, rejected_pct,
          delivered_within_5s_pct, delivery_p99: .delivery_latency.p99_ms,
          rss_kib: .rss_per_connection_kib, accepted, rejected_429,
          cpu_load: .cpu.load_generator_cpu_secs, cpu_node: .cpu.server_cpu_secs}
         | with_entries(select(.value != null))' \
    "$out" >&2 || true
}

# cpu_ms PID...: summed utime + stime of the processes, ms.
cpu_ms() {
  local total=0 pid ticks clk_tck
  clk_tck="$(getconf CLK_TCK)"
  for pid in "$@"; do
    # Fields 14 and 15 after the command name (which may contain spaces: cut after ')').
    ticks="$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')"
    total=$(( total + ticks ))
  done
  echo $(( total * 1000 / clk_tck ))
}

# The median of a jq path over JSON files: median PATH FILE...
median() {
  local path="$1"; shift
  jq -s "[.[] | $path | select(. != null)] | sort | if length == 0 then null else .[(length / 2 | floor)] end" "$@"
}

# The checkout's commit, and the node binary when NODE_BIN is another one than its build (an
# A/B against an older node must not be reported as this commit's figures).
bench_commit() {
  local commit
  commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [[ "$NODE_BIN" != "$BUILT_NODE_BIN" ]]; then
    commit="$commit (load generator; node binary NODE_BIN=$NODE_BIN, not this commit's build)"
  fi
  echo "$commit"
}

machine_json() {
  jq -n --arg cpu "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)" \
    --arg cores "$(nproc)" \
    --arg mem "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)" \
    --arg kernel "$(uname -r)" \
    --arg commit "$(bench_commit)" \
    '{cpu: $cpu, cores: ($cores | tonumber), memory: $mem, kernel: $kernel, commit: $commit,
      note: "load generator and node share the same cores"}'
}
