#!/usr/bin/env bash
# Start N tfsft workers on this machine as one multi-worker run (MultiWorkerMirroredStrategy
# over 127.0.0.1), for testing the multi-worker path without a cluster:
#
#   tools/launch_multiworker.sh 2 -- fit tasks/sentiment --output runs/mw train.epochs=1
#
# Each worker gets a TF_CONFIG naming all N (free ports picked here) and its own index;
# worker 0 is the chief and writes the run directory, the others train in step and write
# only scratch files. Their output is prefixed with [worker i]. If one worker fails, the
# others are stopped; the exit code is the first failure's (0 when all succeed).
# Python: $PYTHON, else `python`. On real machines, set TF_CONFIG on each host instead
# (README, "TPU, multi-GPU and multi-worker").
set -uo pipefail

if [ $# -lt 3 ] || [ "$2" != "--" ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N -- <tfsft arguments>   (e.g. $0 2 -- fit tasks/sentiment --output runs/mw)" >&2
  exit 2
fi
n=$1
shift 2
py=${PYTHON:-python}

ports=$("$py" - "$n" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
) || { echo "could not pick free ports" >&2; exit 1; }
workers=$(printf '"127.0.0.1:%s",' $ports)
workers="[${workers%,}]"

pids=()
for ((i = 0; i < n; i++)); do
  TF_CONFIG="{\"cluster\": {\"worker\": $workers}, \"task\": {\"type\": \"worker\", \"index\": $i}}" \
    "$py" -m tfsft "$@" > >(sed -u "s/^/[worker $i] /") 2> >(sed -u "s/^/[worker $i] /" >&2) &
  pids+=($!)
done

stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
}
trap 'stop_all; exit 130' INT TERM

status=0
running=("${pids[@]}")
while [ "${#running[@]}" -gt 0 ]; do
  wait -n -p done_pid "${running[@]}"
  code=$?
  left=()
  for p in "${running[@]}"; do [ "$p" != "$done_pid" ] && left+=("$p"); done
  running=("${left[@]}")
  if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$code
    echo "[launch] a worker (pid $done_pid) exited with $code; stopping the others" >&2
    stop_all
  fi
done
wait
exit "$status"
