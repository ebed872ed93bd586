#!/usr/bin/env bash
# Every GPU check of prefopt in one command, for a GPU host with no internet:
#   tests     every test marked gpu (pytest -m gpu): the kernels at real shapes, the DPO
#             step through them against full logits, every objective through prefopt-train
#   bench     the kernel microbenchmarks: benchmarks/RESULTS.md and benchmarks/logprobs.png
#   e2e       the DPO step against TRL's DPOTrainer: benchmarks/RESULTS.md and
#             benchmarks/e2e/e2e.png (arguments after `--` go to benchmarks/e2e/run.py)
#
#   benchmarks/gpu/run.sh                      # tests bench e2e
#   benchmarks/gpu/run.sh e2e -- --models qwen2-0.5b
#
# The host's python3 must already have torch, triton, transformers, Lightning, peft and
# accelerate; a folder .whl/ made by benchmarks/gpu/wheels.sh supplies the rest offline.
# Logs, JSON, charts and RESULTS.md (8 files at most) are copied to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
parts=() extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --) shift; extra=("$@"); break ;;
        *) parts+=("$1"); shift ;;
    esac
done
[ ${#parts[@]} -eq 0 ] && parts=(tests bench e2e)
out=${OUT:-}

if [ -d .whl ]; then
    rm -rf /tmp/prefopt-site  # only these wheels' versions, not an earlier run's
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/prefopt-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/prefopt-site${PYTHONPATH:+:$PYTHONPATH}
fi
# prefopt itself, with its entry points (objectives are found through them).
$PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
$PY - <<'PY'
import importlib.metadata as m, torch
names = ["torch", "triton", "transformers", "pytorch-lightning", "accelerate", "peft", "trl",
         "lazy_loader",
         "datasets", "pyarrow", "hydra-core", "liger-kernel", "cut-cross-entropy"]
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "missing"
device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(device, "|", ", ".join(f"{n} {version(n)}" for n in names))
PY

status=0
for part in "${parts[@]}"; do
    case "$part" in
        tests)
            $PY -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 \
                | tee /tmp/prefopt-gpu-tests.log | tail -n 40 || status=1
            files=(/tmp/prefopt-gpu-tests.log) ;;
        bench)
            $PY -m pytest benchmarks -q -p no:cacheprovider --benchmark-enable \
                --benchmark-json=benchmarks/bench.json 2>&1 | tail -n 30 || status=1
            $PY benchmarks/report.py benchmarks/bench.json || status=1
            files=(benchmarks/bench.json benchmarks/logprobs.png) ;;
        e2e)
            $PY benchmarks/e2e/run.py "${extra[@]}" 2>&1 | tee /tmp/prefopt-e2e.log || status=1
            files=(/tmp/prefopt-e2e.log benchmarks/e2e/results.json benchmarks/e2e/e2e.png
                   benchmarks/e2e/results-kernels.md) ;;
        *) echo "unknown part '$part' (tests, bench, e2e)"; exit 2 ;;
    esac
    if [ -n "$out" ]; then
        cp -f "${files[@]}" "$out"/ 2>/dev/null
    fi
done
[ -n "$out" ] && cp -f benchmarks/RESULTS.md "$out"/
exit $status
