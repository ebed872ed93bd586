#!/usr/bin/env bash
# Wheels for a GPU host without internet whose Python already has torch, triton,
# transformers, Lightning and accelerate (as a CUDA image often does), but not the rest of
# what prefopt's GPU checks import. Run on a machine with internet; carry the folder over.
#
#   benchmarks/gpu/wheels.sh [DIR] [PYTHON_VERSION]      # default .whl, 3.12
set -euo pipefail
dir=${1:-.whl}
py=${2:-3.12}
pip=${PIP:-python3 -m pip}
mkdir -p "$dir"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
# Pure-Python packages and their own missing needs: Hydra, TRL, datasets, lazy_loader (which
# prefopt's package __init__s use), the peers of the kernel benchmark (Liger, Cut
# Cross-Entropy).
$pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    "${platforms[@]}" -d "$dir" \
    hydra-core==1.3.8 omegaconf==2.3.1 trl==1.16.0 datasets==4.8.4 dill==0.4.1 \
    multiprocess==0.70.19 liger-kernel==0.8.5 cut-cross-entropy==25.1.1 lazy_loader==0.6 \
    ${WITH_PYARROW:+pyarrow==26.0.1}  # datasets 4.8 needs pyarrow >= 21: WITH_PYARROW=1
# What run.sh itself runs: pytest (pyproject's addopts carry --benchmark-disable, which only
# pytest-benchmark knows), pytest-benchmark with py-cpuinfo2, and matplotlib for report.py's
# charts, with their own needs (numpy and packaging come with torch and transformers), and
# wheel, which `pip install -e .` without build isolation needs next to setuptools < 70.1.
# Python < 3.11 also needs exceptiongroup and tomli for pytest.
extra_py=()
case "$py" in 3.10|3.9) extra_py=(exceptiongroup==1.3.0 tomli==2.2.1) ;; esac
$pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    "${platforms[@]}" -d "$dir" \
    pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0 \
    pytest-benchmark==5.3.1 py-cpuinfo2==10.1.1 \
    matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1 \
    pillow==13.0.0 pyparsing==3.3.3 python-dateutil==4.0.0 tzdata==2026.6 wheel==0.45.1 \
    "${extra_py[@]}"
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 needs) is published as a source archive
# only: build its wheel here. All of these together are about 25 MB (matplotlib, pillow and
# fonttools most of it; pyarrow: 40 MB more).
$pip wheel -q --no-deps -w "$dir" antlr4-python3-runtime==4.9.3
ls -la "$dir"
