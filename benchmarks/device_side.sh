#!/usr/bin/env bash
# The device-side figures of `make bench`: provisioning (x86 + arm64, from scratch then again), the callers' p95
# latency with a shadow candidate on against off (x86 + arm64) and the agent's footprint while streaming at 1 Hz,
# on a lab of their own that is taken down afterwards.
# Usage: benchmarks/device_side.sh [PYTHON]   (needs root, like every lab)
set -euo pipefail
PY=${1:-.venv/bin/python}
LAB=$(mktemp -d /tmp/fleetdesk-bench-lab.XXXXXX)
export FLEETDESK_LAB_DIR=$LAB
trap '.venv/bin/fleetdesk lab down >/dev/null 2>&1 || true; rm -rf "$LAB"' EXIT
.venv/bin/fleetdesk lab up --devices ipc-x86:2,rpi4:1 >/dev/null
"$PY" benchmarks/provision.py --x86 ipc-02 --arm rpi4-01
"$PY" benchmarks/shadow_latency.py --x86 ipc-02 --arm rpi4-01
"$PY" benchmarks/agent_footprint.py --device ipc-01 --seconds 30
