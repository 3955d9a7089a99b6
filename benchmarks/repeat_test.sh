#!/usr/bin/env bash
# Run one pytest selection N times in a row and count the passes: the evidence for a flaky test's fix.
#
#   benchmarks/repeat_test.sh 20 tests/integration/test_train.py -x -q
#
# Each run is a fresh pytest process (a fresh local Ray and moto server), as on a fresh CI machine.
# Exit status: 0 when every run passed. Logs of failed runs are kept under ${LOG_DIR:-/tmp}/repeat_test.
set -uo pipefail
runs=${1:?usage: repeat_test.sh N PYTEST_ARGS...}
shift
log_dir=${LOG_DIR:-/tmp}/repeat_test
mkdir -p "$log_dir"
python=${PYTHON:-.venv/bin/python}
passed=0
for ((i = 1; i <= runs; i++)); do
    start=$(date +%s)
    if RAY_AUTH_MODE=disabled "$python" -m pytest "$@" >"$log_dir/run_$i.log" 2>&1; then
        passed=$((passed + 1))
        verdict=passed
        rm -f "$log_dir/run_$i.log"
    else
        verdict="FAILED (log: $log_dir/run_$i.log)"
    fi
    echo "run $i/$runs: $verdict in $(($(date +%s) - start)) s; $passed passed so far"
done
echo "$passed of $runs runs passed: $*"
[[ $passed -eq $runs ]]
