#!/usr/bin/env bash
# Why requires_ansible is >=2.19.4: ansible-core 2.19.0 to 2.19.3 lose a task result between
# plays now and then (the results thread dies with KeyError in _convert_wire_task_result_to_raw)
# and ansible-playbook then waits forever. This runs the shape that hung our deploy N times with
# each ansible-core bin directory given and prints the hangs; 2.19.4 and later show none.
#   usage: tests/matrix/serial-race/run.sh RUNS BIN_DIR...
set -u
here=$(cd "$(dirname "$0")" && pwd)
runs=$1
shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for bin in "$@"; do
  hangs=0
  failed=0
  keyerrors=0
  for _ in $(seq 1 "$runs"); do
    timeout 40 "$bin/ansible-playbook" -i "$here/inventory.ini" "$here/playbook.yml" >"$log" 2>&1
    rc=$?
    # timeout(1) says 124 when it had to stop the run; anything else non-zero is a plain failure.
    if [ "$rc" = 124 ]; then hangs=$((hangs + 1)); elif [ "$rc" != 0 ]; then failed=$((failed + 1)); fi
    grep -q KeyError "$log" && keyerrors=$((keyerrors + 1))
  done
  version=$("$bin/ansible" --version | sed -n '1s/.*core \([0-9.]*\).*/\1/p')
  echo "ansible-core $version: $runs runs, $hangs hung, $failed failed otherwise, $keyerrors KeyError"
done
