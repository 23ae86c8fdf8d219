#!/usr/bin/env bash
# A GPU check in under 8 minutes on an H100 (BUILD.md, "Checking a GPU"), for a machine with
# JAX with CUDA, flax, optax, orbax-checkpoint, chex, tensorboard and matplotlib, and no
# network: installs critkl without dependencies, and tensorboardX and pytest from the wheels
# in wheels/ at the repository's root (git-ignored; fill it where there is network:
#   pip download tensorboardX pytest pluggy iniconfig --no-deps -d wheels
# ), then runs benchmarks/device_check.py: the accelerator-path tests, pre-training and RL
# throughput, one table last and a JSON in $OUT (or where --json says). Arguments go to
# device_check.py (--dry-run: the tiny model, a few steps, on any machine).
set -euo pipefail
cd "$(dirname "$0")/.."
missing() { ! python -c "import $1" 2>/dev/null; }
if missing tensorboardX || missing pytest; then
    shopt -s nullglob
    wheels=(wheels/*.whl)
    if [ ${#wheels[@]} -gt 0 ]; then
        python -m pip install --no-deps --no-index "${wheels[@]}"
    fi
fi
if missing tensorboardX; then
    echo "device_check.sh: tensorboardX is not installed and wheels/ has no wheel of it; where" \
         "there is network run 'pip download tensorboardX pytest pluggy iniconfig --no-deps" \
         "-d wheels' and carry wheels/ here" >&2
    exit 2
fi
missing pytest && echo "device_check.sh: no pytest (add its wheels to wheels/): the tests" \
    "will be reported as failed, the measurements still run" >&2
# Without network pip cannot build in an isolated environment; if the local setuptools cannot
# build either, critkl runs from the checkout.
if ! python -m pip install --no-deps --no-build-isolation -e . >/dev/null 2>&1; then
    echo "device_check.sh: pip could not install critkl; running it from the checkout" >&2
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
exec python benchmarks/device_check.py "$@"
