# Shared helpers of the server scripts (sourced; needs $PY, a python interpreter, and
# $HERE, this directory).

die() { echo "error: $*" >&2; exit 1; }

# group_alive PGID: the process group has a live (not zombie) member
group_alive() { "$PY" "$HERE/_proc.py" alive "$1"; }

# pid_alive PIDFILE: the process group recorded in PIDFILE still has live members
pid_alive() {
  [[ -f "$1" ]] || return 1
  local pid
  pid="$(cat "$1" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] && group_alive "$pid"
}

# http_ok URL: a 2xx answer within 3 s (python: curl is not everywhere)
http_ok() {
  "$PY" - "$1" <<'PYEOF' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
    sys.exit(0 if 200 <= r.status < 300 else 1)
PYEOF
}

# wait_healthy URL PIDFILE TIMEOUT LOG: poll URL until healthy; fail early if the
# process died (and show the end of its log)
wait_healthy() {
  local url="$1" pidfile="$2" timeout="$3" log="$4" waited=0
  until http_ok "$url"; do
    if ! pid_alive "$pidfile"; then
      echo "process exited during startup; last log lines:" >&2
      tail -n 20 "$log" >&2 || true
      return 1
    fi
    if (( waited >= timeout )); then
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
}

# stop_group PIDFILE NAME TIMEOUT [IDLE_CHECK]: TERM the process group; KILL the group
# and any descendants that left it after TIMEOUT s.  IDLE_CHECK (a function name) is
# called with the pid while waiting: it may escalate once the process is idle.
stop_group() {
  local pidfile="$1" name="$2" timeout="$3" idle_check="${4:-}" pid waited=0
  if ! pid_alive "$pidfile"; then
    rm -f "$pidfile"
    echo "$name not running"
    return 0
  fi
  pid="$(cat "$pidfile")"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  while group_alive "$pid"; do
    if (( waited >= timeout * 2 )); then
      echo "$name did not stop within ${timeout}s; killing" >&2
      local stragglers
      stragglers="$("$PY" "$HERE/_proc.py" descendants "$pid" | tr '\n' ' ')"
      kill -KILL -- "-$pid" 2>/dev/null || true
      # shellcheck disable=SC2086
      [[ -n "$stragglers" ]] && kill -KILL $stragglers 2>/dev/null || true
      break
    fi
    [[ -n "$idle_check" ]] && "$idle_check" "$pid"
    sleep 0.5
    waited=$((waited + 1))
  done
  rm -f "$pidfile"
  echo "$name stopped (pid $pid)"
}
