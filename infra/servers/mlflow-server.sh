#!/usr/bin/env bash
# MLflow tracking server on loopback for the laptop / single-machine setup.
#
#   infra/servers/mlflow-server.sh start [--port 5000]   # waits until /health answers
#   infra/servers/mlflow-server.sh status
#   infra/servers/mlflow-server.sh stop                  # TERM the process group, then KILL
#
# Defaults: the pipeline's own SQLite store (<repo>/mlflow.db, where `dvc repro` logs when
# MLFLOW_TRACKING_URI is unset) and artefacts proxied from <repo>/mlartifacts, so the UI
# shows every run the embedded pipeline made.  Then point the pipeline at the server:
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#
# Options (or environment variables):
#   --port N                 MLFLOW_PORT                   (5000)
#   --host ADDR              MLFLOW_HOST                   (127.0.0.1: loopback only)
#   --backend-store-uri URI  MLFLOW_BACKEND_STORE_URI      (sqlite:///<repo>/mlflow.db)
#   --artifacts-dir DIR      MLFLOW_ARTIFACTS_DESTINATION  (<repo>/mlartifacts)
#   --state-dir DIR          MIRAGE_SERVER_STATE           (<repo>/.cache/servers): pid, log
#   --timeout S              MIRAGE_SERVER_TIMEOUT         (120): wait for health / shutdown
# The mlflow binary is the repo venv's (.venv/bin/mlflow) unless MLFLOW_BIN is set.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
PORT="${MLFLOW_PORT:-5000}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$REPO/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-$REPO/mlartifacts}"
STATE="${MIRAGE_SERVER_STATE:-$REPO/.cache/servers}"
TIMEOUT="${MIRAGE_SERVER_TIMEOUT:-120}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --host) HOST="$2"; shift 2 ;;
    --backend-store-uri) BACKEND="$2"; shift 2 ;;
    --artifacts-dir) ARTIFACTS="$2"; shift 2 ;;
    --state-dir) STATE="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

if [[ -n "${MLFLOW_BIN:-}" ]]; then
  MLFLOW="$MLFLOW_BIN"
elif [[ -x "$REPO/.venv/bin/mlflow" ]]; then
  MLFLOW="$REPO/.venv/bin/mlflow"
else
  MLFLOW="$(command -v mlflow || true)"
fi
PY="$(dirname "${MLFLOW:-/usr/bin/python3}")/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"

# MLflow 3's server job runner (a dozen huey consumers for GenAI trace jobs) is not used
# by this pipeline and costs a minute of CPU at startup on a small machine.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

PIDFILE="$STATE/mlflow-$PORT.pid"
LOG="$STATE/mlflow-$PORT.log"
URL="http://$HOST:$PORT"

# shellcheck source=infra/servers/lib.sh
source "$HERE/lib.sh"

start() {
  [[ -n "$MLFLOW" ]] || die "mlflow not found (make setup, or set MLFLOW_BIN)"
  if pid_alive "$PIDFILE"; then
    echo "mlflow server already running (pid $(cat "$PIDFILE")) at $URL"
    return 0
  fi
  if http_ok "$URL/health"; then
    die "port $PORT already serves something else (not started by this script)"
  fi
  mkdir -p "$STATE" "$ARTIFACTS"
  # own session (setsid): stop signals the whole group, uvicorn workers included
  setsid "$MLFLOW" server \
    --host "$HOST" --port "$PORT" --workers 1 \
    --backend-store-uri "$BACKEND" \
    --serve-artifacts --artifacts-destination "$ARTIFACTS" \
    >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  if ! wait_healthy "$URL/health" "$PIDFILE" "$TIMEOUT" "$LOG"; then
    stop >/dev/null 2>&1 || true
    die "mlflow server did not become healthy within ${TIMEOUT}s (log: $LOG)"
  fi
  echo "mlflow server up at $URL (pid $(cat "$PIDFILE"), store $BACKEND, log $LOG)"
  echo "export MLFLOW_TRACKING_URI=$URL"
}

stop() {
  stop_group "$PIDFILE" "mlflow server" "${MIRAGE_STOP_TIMEOUT:-20}"
}

status() {
  if pid_alive "$PIDFILE" && http_ok "$URL/health"; then
    echo "mlflow server running (pid $(cat "$PIDFILE")) at $URL"
  else
    echo "mlflow server not running on port $PORT"
    return 3
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
