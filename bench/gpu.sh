#!/usr/bin/env bash
# The whole GPU benchmark in one command, for a GPU machine without internet (bench/README.md, GPU.md):
#
#     bash bench/gpu.sh
#
# Expects python3 with torch (CUDA), transformers, accelerate, safetensors and huggingface_hub installed, and the
# project's other dependencies as wheels in .whl/ (ignored by git), downloaded beforehand on a machine with
# internet, from the project root, with exactly this line (Python 3.12, manylinux x86-64, pinned versions):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 compel==2.5.1 pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 \
#     python-dotenv==1.2.4 typing-inspection==0.4.5 annotated-types==0.8.0 importlib-metadata==10.2.0 zipp==4.1.2 \
#     typing-extensions==4.16.0 pyparsing==3.3.3
#
# It installs them into a private folder (nothing system-wide), prints the machine, runs
# `bench/engine_throughput.py --gpu` (engine vs plain diffusers at batch 1, 8 and auto, preview cost, compile off
# vs on, fraction of the compute floor, peak memory, host syncs in the step callbacks) under a 330 s limit so the
# whole command stays under 6 minutes, and writes everything to bench/gpu-<UTC time>.log (ignored by git).
# Extra arguments go to the benchmark, e.g. `bash bench/gpu.sh --peak-tflops 989` or `--no-compile`.
set -euo pipefail
cd "$(dirname "$0")/.."
log="bench/gpu-$(date -u +%Y%m%dT%H%M%SZ).log"
site="${IMAGINEBOT_SITE:-/tmp/imaginebot-site}"
if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "bench/gpu.sh: no wheels in .whl/ — run the pip download line at the top of this script first" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/imaginebot-inductor}"
{
    echo "# bench/gpu.sh $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
    python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
    started=$(date +%s)
    status=0
    timeout 330 python3 bench/engine_throughput.py --gpu --rounds 2 "$@" || status=$?
    echo "# engine_throughput --gpu exit status $status after $(( $(date +%s) - started )) s"
} 2>&1 | tee "$log"
echo "log: $log"
