#!/usr/bin/env bash
# The test suite with a CPU hog beside it: one busy process per core for the whole run.
# Tests must hold on a loaded machine (real-time checks compare with a control from the same run);
# this is how that is checked. Usage: bash tools/test_under_load.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
cores=$(nproc)
pids=()
for _ in $(seq "$cores"); do
    python -c "while True: pass" &
    pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
echo "running the suite beside $cores busy processes (load about $((2 * cores)) on $cores cores)" >&2
start=$(date +%s)
python -m pytest "$@"
echo "suite under load: $(( $(date +%s) - start )) s" >&2
