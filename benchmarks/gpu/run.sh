#!/usr/bin/env bash
# Every GPU check of prefopt in one command, for a GPU host with no internet:
#   tests     every test marked gpu (pytest -m gpu): the kernels at real shapes, the DPO
#             step through them against full logits, every objective through prefopt-train
#   bench     the kernel microbenchmarks: benchmarks/RESULTS.md and benchmarks/logprobs.png
#   e2e       the DPO step against TRL's DPOTrainer: benchmarks/RESULTS.md and
#             benchmarks/e2e/e2e.png (arguments after `--` go to benchmarks/e2e/run.py)
#
#   collect   not in the default run: install, then collect what tests and bench would run
#             (pytest --collect-only) and import report.py's matplotlib; seconds, no GPU
#
#   benchmarks/gpu/run.sh                      # tests bench e2e
#   benchmarks/gpu/run.sh e2e -- --models qwen2-0.5b
#
# The host's python3 must already have torch, triton, transformers, Lightning, peft and
# accelerate; a folder .whl/ made by benchmarks/gpu/wheels.sh supplies the rest offline
# (pytest and pytest-benchmark included). WHEELS=DIR takes them from DIR instead,
# PREFOPT_SITE=DIR installs them there (default /tmp/prefopt-site), PYTHON=... picks the
# interpreter. pytest runs from a folder outside the repository: `python -m pytest` puts
# its working directory on sys.path, and the repository root there would expose kernels/
# as a top-level `kernels` package (which transformers probes for).
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

root=$(pwd)
wheels=${WHEELS:-.whl}
site=${PREFOPT_SITE:-/tmp/prefopt-site}
if [ -d "$wheels" ]; then
    rm -rf "$site"  # only these wheels' versions, not an earlier run's
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$wheels"/*.whl || exit 1
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
# pytest's working directory: anywhere but the repository root (see above).
away=$(mktemp -d)
trap 'rm -rf "$away"' EXIT
run_pytest() {
    (cd "$away" && $PY -m pytest --rootdir "$root" -c "$root/pyproject.toml" \
        -p no:cacheprovider "$@")
}
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
        collect)
            # The same invocations as tests and bench, collecting only; then what report.py
            # and the pytest process import, from the same working directory.
            run_pytest -q --collect-only -m gpu "$root/tests" | tail -n 3 || status=1
            run_pytest -q --collect-only --benchmark-enable "$root/benchmarks" \
                | tail -n 3 || status=1
            (cd "$away" && $PY - <<'PY') || status=1
import importlib.util, sys
import matplotlib, pytest_benchmark  # report.py's chart; the benchmarks' fixture
if importlib.util.find_spec("kernels") is not None:
    sys.exit("a top-level `kernels` package is importable from pytest's directory")
print("collect: matplotlib", matplotlib.__version__, "| no top-level kernels package")
PY
            files=() ;;
        tests)
            run_pytest -q -m gpu "$root/tests" 2>&1 \
                | tee /tmp/prefopt-gpu-tests.log | tail -n 40 || status=1
            files=(/tmp/prefopt-gpu-tests.log) ;;
        bench)
            run_pytest -q "$root/benchmarks" --benchmark-enable \
                --benchmark-json="$root/benchmarks/bench.json" 2>&1 | tail -n 30 || status=1
            $PY benchmarks/report.py benchmarks/bench.json || status=1
            files=(benchmarks/bench.json benchmarks/logprobs.png) ;;
        e2e)
            $PY benchmarks/e2e/run.py "${extra[@]}" 2>&1 | tee /tmp/prefopt-e2e.log || status=1
            files=(/tmp/prefopt-e2e.log benchmarks/e2e/results.json benchmarks/e2e/e2e.png
                   benchmarks/e2e/results-kernels.md) ;;
        *) echo "unknown part '$part' (tests, bench, e2e, collect)"; exit 2 ;;
    esac
    if [ -n "$out" ] && [ ${#files[@]} -gt 0 ]; then
        cp -f "${files[@]}" "$out"/ 2>/dev/null
    fi
done
[ -n "$out" ] && cp -f benchmarks/RESULTS.md "$out"/
exit $status
