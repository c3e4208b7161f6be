#!/usr/bin/env bash
# Starts N CPU processes of `camjax.train` on this machine (loopback), joined by JAX's
# multi-controller runtime, and waits for them; exits non-zero (and stops the others) if any fails.
#
#   launch/local.sh N [train flags...]
#   launch/local.sh 2 --config configs/camnet.py:quick --workdir runs/mh --config.data.workers=0
#
# Environment: PYTHON (default: python3), LOCAL_DEVICES (CPU devices per process, default 1),
# PORT (coordinator port, default: a free one), LOG_DIR (default: none; else process i's
# output goes to LOG_DIR/process_i.log, process 0's is also shown).
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N [train flags...]   (N: number of processes)" >&2
  exit 2
fi
n=$1
shift
python=${PYTHON:-python3}
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${LOCAL_DEVICES:-1}"

pids=()
signal_all() {
  for pid in "${pids[@]}"; do kill -s "$1" "$pid" 2>/dev/null || true; done
}
# Ctrl-C / TERM: passed on, so the processes checkpoint together and exit.
trap 'signal_all TERM; wait; exit 143' TERM INT

for ((i = 0; i < n; i++)); do
  cmd=("$python" -m camjax.train --coordinator_address="127.0.0.1:$port" --num_processes="$n" --process_id="$i" "$@")
  if [[ -n "${LOG_DIR:-}" ]]; then
    mkdir -p "$LOG_DIR"
    if ((i == 0)); then
      "${cmd[@]}" > >(tee "$LOG_DIR/process_$i.log") 2>&1 &
    else
      "${cmd[@]}" >"$LOG_DIR/process_$i.log" 2>&1 &
    fi
  else
    "${cmd[@]}" &
  fi
  pids+=($!)
done

# A failed process leaves the others waiting in a collective: kill them.
status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  done_pid=
  if wait -n -p done_pid "${running[@]}"; then
    left=()
    for pid in "${running[@]}"; do [[ $pid == "$done_pid" ]] || left+=("$pid"); done
    running=("${left[@]}")
  else
    status=$?
    echo "local.sh: process $done_pid exited with status $status; killing the others" >&2
    signal_all KILL
    wait || true
    break
  fi
done
exit "$status"
