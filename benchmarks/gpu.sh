#!/usr/bin/env bash
# The GPU measurements of issue 15, in one short run for a lent GPU machine.
#
#   bash benchmarks/gpu.sh OUT_DIR           # on a machine with CUDA (refuses otherwise)
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu.sh OUT_DIR   # the same steps on the CPU, to check the script
#
# Steps (each prints its RESULT line into OUT_DIR/<step>.log; OUT_DIR/results.jsonl collects them):
#   1. explain ratio:     benchmarks/explain_overhead.py --device cuda (segx.explain vs recomputing the maps)
#   2. evaluate throughput on CUDA, float32 and float16 autocast: benchmarks/evaluate_throughput.py
#   3. 3D CT end to end:  `segx explain` of a 512 x 512 x 300 CT phantom with the demo3d pair, --device cuda,
#                         wall time of the whole command (load, networks, SegX, NRRD layers written)
# Python: the interpreter in $PYTHON (default .venv/bin/python, else python3); the data: phantoms
# (../shared/data does not travel to a lent machine).
set -euo pipefail
OUT=${1:?usage: benchmarks/gpu.sh OUT_DIR}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT/monailabel_app${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu.sh: CUDA is not available here (DEVICE=cpu checks the script on the CPU)" >&2
    exit 2
fi
"$PYTHON" -c "import torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() and '$DEVICE' == 'cuda' else 'cpu', '| torch', torch.__version__)" | tee "$OUT/device.txt"

step() {  # step NAME COMMAND...: run, keep the log, collect its RESULT line
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.log" | grep -E "^(RESULT|segx evaluate|TIME)" || true
    grep -E "^(RESULT|TIME) " "$OUT/$name.log" | tail -1 | sed "s/^[A-Z]* /{\"step\": \"$name\", \"result\": /; s/\$/}/" >>"$OUT/results.jsonl"
}

LIMIT=$([ -n "$QUICK" ] && echo 32 || echo 400)
step explain_ratio "$PYTHON" "$ROOT/benchmarks/explain_overhead.py" --device "$DEVICE" ${QUICK:+--quick}
step evaluate_fp32 "$PYTHON" "$ROOT/benchmarks/evaluate_throughput.py" --device "$DEVICE" --limit "$LIMIT" --repeats 3
if [ "$DEVICE" = cuda ]; then
    step evaluate_autocast "$PYTHON" "$ROOT/benchmarks/evaluate_throughput.py" --device cuda --autocast --limit "$LIMIT" --repeats 3
fi

SHAPE=$([ -n "$QUICK" ] && echo "64 64 40" || echo "512 512 300")
"$PYTHON" - "$OUT/ct.nii.gz" $SHAPE <<'EOF'
import sys
import numpy as np
from segx.export import save_volume
from segx.phantoms import phantom_3d
from monai.transforms import Resize
path, shape = sys.argv[1], [int(v) for v in sys.argv[2:]]
volume = Resize(shape, mode="trilinear")(phantom_3d(np.random.default_rng(0), 1, False).image[None].astype(np.float32))[0]
save_volume(path, np.asarray(volume), np.diag([0.7, 0.7, 1.0, 1.0]))
print("CT phantom", shape)
EOF
ct_explain() {
    local start=$EPOCHREALTIME
    "$PYTHON" -m segx.cli explain "$OUT/ct.nii.gz" --model demo3d --device "$DEVICE" --out "$OUT/ct_layers" >"$OUT/ct_explain.json"
    echo "TIME {\"seconds\": $(awk "BEGIN {print $EPOCHREALTIME - $start}"), \"shape\": \"$SHAPE\", \"device\": \"$DEVICE\"}"
}
step ct_end_to_end ct_explain
rm -rf "$OUT/ct.nii.gz" "$OUT/ct_layers"
echo "== results in $OUT/results.jsonl"
cat "$OUT/results.jsonl"
