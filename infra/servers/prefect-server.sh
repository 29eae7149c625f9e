#!/usr/bin/env bash
# Prefect server + a process work pool + one worker, on loopback (laptop / one machine).
#
#   infra/servers/prefect-server.sh start     # server (waits on /api/health), pool, worker
#   infra/servers/prefect-server.sh deploy    # nightly deployment on the pool
#   infra/servers/prefect-server.sh status
#   infra/servers/prefect-server.sh stop      # worker first, then server
#
# Then flows and the CLI talk to it with  export PREFECT_API_URL=http://127.0.0.1:4200/api
# The server keeps its SQLite database in $PREFECT_HOME (<repo>/.prefect, git-ignored).
# The worker runs flow runs as subprocesses (one at a time: --limit 1) in this checkout.
#
# Options (or environment variables):
#   --port N          PREFECT_PORT          (4200)
#   --host ADDR       PREFECT_HOST          (127.0.0.1: loopback only)
#   --pool NAME       MIRAGE_WORK_POOL      (mirage-process; must match prefect.yaml)
#   --worker-port N   PREFECT_WORKER_PORT   (4201): the worker's /health endpoint
#   --no-worker       start only the server
#   --state-dir DIR   MIRAGE_SERVER_STATE   (<repo>/.cache/servers): pid and log files
#   --timeout S       MIRAGE_SERVER_TIMEOUT (120): wait for health / shutdown
# The prefect binary is the repo venv's (.venv/bin/prefect) unless PREFECT_BIN is set.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
PORT="${PREFECT_PORT:-4200}"
HOST="${PREFECT_HOST:-127.0.0.1}"
POOL="${MIRAGE_WORK_POOL:-mirage-process}"
WORKER_PORT="${PREFECT_WORKER_PORT:-4201}"
STATE="${MIRAGE_SERVER_STATE:-$REPO/.cache/servers}"
TIMEOUT="${MIRAGE_SERVER_TIMEOUT:-120}"
WITH_WORKER=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --host) HOST="$2"; shift 2 ;;
    --pool) POOL="$2"; shift 2 ;;
    --worker-port) WORKER_PORT="$2"; shift 2 ;;
    --no-worker) WITH_WORKER=0; shift ;;
    --state-dir) STATE="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

if [[ -n "${PREFECT_BIN:-}" ]]; then
  PREFECT="$PREFECT_BIN"
elif [[ -x "$REPO/.venv/bin/prefect" ]]; then
  PREFECT="$REPO/.venv/bin/prefect"
else
  PREFECT="$(command -v prefect || true)"
fi
PY="$(dirname "${PREFECT:-/usr/bin/python3}")/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"

export PREFECT_HOME="${PREFECT_HOME:-$REPO/.prefect}"
export PREFECT_API_URL="http://$HOST:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
# the worker's health endpoint, on loopback too
export PREFECT_WORKER_WEBSERVER_HOST="$HOST" PREFECT_WORKER_WEBSERVER_PORT="$WORKER_PORT"
# flow runs find this checkout (flows/retrain.py: default repo_dir)
export MIRAGE_REPO_DIR="${MIRAGE_REPO_DIR:-$REPO}"

SERVER_PID="$STATE/prefect-server-$PORT.pid"
SERVER_LOG="$STATE/prefect-server-$PORT.log"
WORKER_PID="$STATE/prefect-worker-$PORT.pid"
WORKER_LOG="$STATE/prefect-worker-$PORT.log"

# shellcheck source=infra/servers/lib.sh
source "$HERE/lib.sh"

start_server() {
  if pid_alive "$SERVER_PID"; then
    echo "prefect server already running (pid $(cat "$SERVER_PID")) at $PREFECT_API_URL"
    return 0
  fi
  if http_ok "$PREFECT_API_URL/health"; then
    die "port $PORT already serves something else (not started by this script)"
  fi
  mkdir -p "$STATE" "$PREFECT_HOME"
  setsid "$PREFECT" server start --host "$HOST" --port "$PORT" \
    >"$SERVER_LOG" 2>&1 </dev/null &
  echo $! >"$SERVER_PID"
  if ! wait_healthy "$PREFECT_API_URL/health" "$SERVER_PID" "$TIMEOUT" "$SERVER_LOG"; then
    stop_group "$SERVER_PID" "prefect server" 20 >/dev/null || true
    die "prefect server did not become healthy within ${TIMEOUT}s (log: $SERVER_LOG)"
  fi
  echo "prefect server up at $PREFECT_API_URL (pid $(cat "$SERVER_PID"), log $SERVER_LOG)"
}

ensure_pool() {
  if ! "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1; then
    "$PREFECT" --no-prompt work-pool create "$POOL" --type process >/dev/null
    echo "created process work pool $POOL"
  fi
}

start_worker() {
  if pid_alive "$WORKER_PID"; then
    echo "prefect worker already running (pid $(cat "$WORKER_PID")) on pool $POOL"
    return 0
  fi
  # --limit 1: this worker starts one flow run at a time (the deployment's concurrency
  # limit and the flow's workspace lock enforce one pipeline at a time anyway)
  setsid "$PREFECT" worker start --pool "$POOL" --type process --limit 1 \
    --with-healthcheck >"$WORKER_LOG" 2>&1 </dev/null &
  echo $! >"$WORKER_PID"
  if ! wait_healthy "http://$HOST:$WORKER_PORT/health" "$WORKER_PID" "$TIMEOUT" \
      "$WORKER_LOG"; then
    stop_group "$WORKER_PID" "prefect worker" 20 >/dev/null || true
    die "prefect worker did not become healthy within ${TIMEOUT}s (log: $WORKER_LOG)"
  fi
  echo "prefect worker up on pool $POOL (pid $(cat "$WORKER_PID"), log $WORKER_LOG)"
}

start() {
  [[ -n "$PREFECT" ]] || die "prefect not found (make setup, or set PREFECT_BIN)"
  start_server
  if (( WITH_WORKER )); then
    ensure_pool
    start_worker
  fi
  echo "export PREFECT_API_URL=$PREFECT_API_URL"
}

# A TERM makes the worker stop polling and wait for its flow runs; prefect 3.8 then
# exits only on a second interrupt (which it turns into SIGKILL of itself), so once no
# flow run is left under it, send that second interrupt.
worker_idle_escalate() {
  if [[ -z "$("$PY" "$HERE/_proc.py" descendants "$1")" ]]; then
    kill -INT "$1" 2>/dev/null || true
  fi
}

stop() {
  # MIRAGE_STOP_TIMEOUT: how long a running flow run may take to finish (default 20 s)
  local timeout="${MIRAGE_STOP_TIMEOUT:-20}"
  stop_group "$WORKER_PID" "prefect worker" "$timeout" worker_idle_escalate
  stop_group "$SERVER_PID" "prefect server" "$timeout"
}

status() {
  local rc=0
  if pid_alive "$SERVER_PID" && http_ok "$PREFECT_API_URL/health"; then
    echo "prefect server running (pid $(cat "$SERVER_PID")) at $PREFECT_API_URL"
  else
    echo "prefect server not running on port $PORT"; rc=3
  fi
  if pid_alive "$WORKER_PID"; then
    echo "prefect worker running (pid $(cat "$WORKER_PID")) on pool $POOL"
  else
    echo "prefect worker not running"; rc=3
  fi
  return "$rc"
}

deploy() {
  http_ok "$PREFECT_API_URL/health" || die "no prefect server at $PREFECT_API_URL (start first)"
  ensure_pool
  # the nightly deployment of prefect.yaml on this pool, flow code from this checkout
  (cd "$REPO" && "$PREFECT" --no-prompt deploy --name nightly-retrain --pool "$POOL")
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  deploy) deploy ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
