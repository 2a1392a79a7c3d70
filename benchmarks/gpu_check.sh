#!/bin/sh
# The one-shot GPU check (see benchmarks/gpu_check.py and docs/gpu.md): on a machine with a GPU,
#     sh benchmarks/gpu_check.sh              # results in $OUT, else in runs/gpu_check/
#     sh benchmarks/gpu_check.sh --dry-run    # the same stages on the CPU, tiny (CI runs this)
# It needs the repository only: no installation, no network.
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
