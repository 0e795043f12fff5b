#!/usr/bin/env bash
# The GPU check: the test suite on CUDA (float64 and float32) and the throughput benchmarks, within 10 minutes.
#
#     bash benchmarks/device_check.sh            # from the repository root, with the project installed in .venv
#     PYTHON=python3 bash benchmarks/device_check.sh
#
# Each part has its own time limit; a summary line per part is printed at the end. On a machine without
# CUDA it says so and exits 0 without running anything heavy.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "device_check: no CUDA device here (torch.cuda.is_available() is False); nothing run"
    exit 0
fi
"$PYTHON" -c 'import torch; print("device_check:", torch.__version__, torch.cuda.get_device_name(0))'
declare -a SUMMARY
part() {  # part NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo; echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    SUMMARY+=("$name: exit $rc in $((SECONDS - start)) s$([ $rc -eq 124 ] && echo ' (timed out)')")
}
part "tests cuda float64" 200 "$PYTHON" -m pytest -q -x -p no:cacheprovider --device cuda --dtype float64
part "tests cuda float32" 150 "$PYTHON" -m pytest -q -p no:cacheprovider --device cuda --dtype float32 \
    tests/test_contracts.py tests/test_flow_contracts.py tests/test_phase_space.py tests/test_nested_integrator.py \
    tests/test_u1_coupling.py tests/test_coupling_paths.py plugins/lattice-flows-xy/tests
part "hmc throughput cuda" 90 "$PYTHON" benchmarks/hmc_throughput.py --device cuda --sizes 16 64 --chains 1 64 --repeats 3
part "flow training speed cuda" 120 "$PYTHON" benchmarks/train_flows.py speed --device cuda --paths fused plain \
    --shapes 8 16 --fthmc --blocks 3 --seconds 2
echo; echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
