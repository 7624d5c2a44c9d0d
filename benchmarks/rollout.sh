#!/usr/bin/env bash
# The rollout figures of `make bench` (benchmarks/rollout.py: a 3-wave rollout of a 50 MB artifact against the
# bare transfer, resume after SIGKILL, time to the canary's first byte) on a lab of 20 ipc-x86 devices of their
# own, taken down afterwards. Usage: benchmarks/rollout.sh [PYTHON] [rollout.py options, e.g. --json]
# (needs root, like every lab). On a running lab instead:
#   .venv/bin/python benchmarks/rollout.py --lab /tmp/devlab --devices ipc-03..ipc-22
set -euo pipefail
PY=${1:-.venv/bin/python}
shift || true
LAB=$(mktemp -d /tmp/fleetdesk-bench-lab.XXXXXX)
export FLEETDESK_LAB_DIR=$LAB
trap '.venv/bin/fleetdesk lab down >/dev/null 2>&1 || true; rm -rf "$LAB"' EXIT
.venv/bin/fleetdesk lab up --devices ipc-x86:20 >/dev/null
"$PY" benchmarks/rollout.py --lab "$LAB" --count 20 "$@"
