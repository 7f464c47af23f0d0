#!/usr/bin/env bash
# The checks a machine with one GPU runs in at most 8 minutes; never run by CI.
#
#     bash benchmarks/device_check.sh [RESULTS_FOLDER]      # default: $OUT, else ./device-check
#
# Uses the Python it finds (.venv/bin/python, else python3) and whatever torch that machine has: such a
# machine may reach no package registry. Each part prints a line "SKIP <part>: <reason>" when what it needs
# is missing, and every part's output is copied to RESULTS_FOLDER/<part>.txt:
#   1. environment: the GPU, torch and its CUDA, the engines' packages;
#   2. train-cuda: the real trainer (run.py --mode train) on the tiny config on CUDA in fp32, bf16 and fp16
#      (fp16 with its gradient scaler), channels_last, 4 steps each, on generated synthetic data;
#   3. train-step-256: the 256x256 training step of every family (keypoint mask, FOMM, perturbed masks) in
#      fp32, bf16 and fp16 (benchmarks/train_speed.py --device cuda);
#   4. animate-cuda-256 / -512: animation of the taichi-256 networks on CUDA (torch and torch-opt, fp32, bf16,
#      fp16) at 256 and 512 px (benchmarks/animate_speed.py --device cuda);
#   5. animate-cpu-256: the CPU engines on that machine's cores (onnxruntime and openvino, fp32 and int8,
#      skipped where not installed).
set -u
cd "$(dirname "$0")/.."
RESULTS="${1:-${OUT:-device-check}}"
mkdir -p "$RESULTS"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONWARNINGS=ignore
START=$(date +%s)

part() {  # part NAME SECONDS COMMAND...: run with a time limit, keep its output
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" 2>&1 | tee "$RESULTS/$name.txt"
    local status=${PIPESTATUS[0]}
    [ "$status" = 124 ] && echo "TIMEOUT $name after ${limit}s" | tee -a "$RESULTS/$name.txt"
    echo "== $name: exit $status, $(( $(date +%s) - START )) s since start"
}

part environment 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c '
import importlib.metadata as m, torch
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), \"bf16\", torch.cuda.is_bf16_supported())
for name in (\"onnxruntime\", \"openvino\", \"onnx\", \"imageio-ffmpeg\", \"pyyaml\", \"tqdm\"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(\"SKIP-later\", name, \"not installed\")
'"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "SKIP train-cuda, train-step-256, animate-cuda: torch sees no CUDA device" | tee "$RESULTS/skipped.txt"
else
    DATA=$(mktemp -d)
    [ -f data/synthetic/test-pairs.csv ] || part synthetic-data 90 $PY scripts/synthetic_dataset.py --out data/synthetic --force
    for precision in no bf16 fp16; do
        part "train-cuda-$precision" 90 $PY run.py --mode train --config config/tiny-heatmap.yaml --device cuda \
            --mixed_precision "$precision" --channels_last --max_steps 4 --log_dir "$DATA/log-$precision" \
            --checkpoint_with_kp models/tiny-detector.pth.tar
    done
    part train-step-256 200 $PY benchmarks/train_speed.py --device cuda --steps 3 --warmup 1 --settings \
        taichi-256:fp32:nhwc taichi-256:bf16:nhwc taichi-256:fp16:nhwc \
        taichi-256-fomm:fp32:nhwc taichi-256-fomm:bf16:nhwc taichi-256-fomm:fp16:nhwc \
        taichi-256-perturbed:fp32:nhwc taichi-256-perturbed:bf16:nhwc taichi-256-perturbed:fp16:nhwc
    for size in 256 512; do
        part "animate-cuda-$size" 90 $PY benchmarks/animate_speed.py --device cuda --size "$size" --skip_streaming \
            --batches 1 8 --frames 16 --settings torch torch-bf16 torch-fp16 torch-opt torch-opt-bf16 torch-opt-fp16
    done
fi
part animate-cpu-256 150 $PY benchmarks/animate_speed.py --device cpu --size 256 --skip_streaming --batches 4 \
    --frames 8 --settings torch torch-opt onnxruntime openvino onnxruntime-int8 openvino-int8
echo "device check: $(( $(date +%s) - START )) s; results in $RESULTS"
