#!/usr/bin/env bash
# GPU check for complexity-sweep: run once on a machine with an NVIDIA GPU, from anywhere in the repo:
#
#     bash scripts/gpu_check.sh            # ~2-4 minutes on one H100; prints a summary at the end
#
# 1. a venv, .venv-gpu, that sees the machine's own (CUDA) torch: made with --system-site-packages, and
#    when python3 is itself a venv or conda env holding torch (where --system-site-packages would not
#    reach it) with a .pth file pointing at that env. The project goes in with `pip install --no-deps -e .`
#    and then only the requirements that are missing, with the installed torch pinned by a constraint, so
#    the CPU-only pin in pyproject.toml never replaces a CUDA torch. No torch at all: pip installs the
#    pinned one from PyPI (a CUDA build on Linux x86-64);
# 2. nvidia-smi;
# 3. the smoke sweep with four trials sharing the GPU (resources.gpu=0.25), in a temporary folder;
# 4. training speed on the GPU, ms per SGD update per model, C=1 and C=64, one model (unpacked) and 32
#    seeds as one packed model (when models/packed.py exists).
#
# Environment: PYTHON (default python3), GPU_VENV (default .venv-gpu), GPU_CHECK_BUDGET (updates per
# timing, default 300), GPU_CHECK_SKIP_SWEEP=1 to skip step 3, GPU_CHECK_NO_VENV=1 to make no venv and
# install nothing (offline machines where PYTHON already imports every requirement, e.g. through
# PYTHONPATH): step 1 then only checks the imports, and the project runs from this checkout (the repo goes
# first on PYTHONPATH, and a `sweep` that runs `PYTHON -m sweep.cli` on PATH).
# Exit status: 0 when every step passed, 1 otherwise (each step's outcome is in the summary).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=$(realpath -m "${GPU_VENV:-.venv-gpu}")
BUDGET=${GPU_CHECK_BUDGET:-300}
export PIP_DISABLE_PIP_VERSION_CHECK=1
declare -a SUMMARY=()
failed=0
record() {  # record STEP STATUS DETAIL
    SUMMARY+=("$(printf '%-8s %-5s %s' "$1" "$2" "$3")")
    [ "$2" = "ok" ] || [ "$2" = "skip" ] || failed=1
}
banner() { printf '\n=== %s ===\n' "$*"; }

# -- 1. environment ---------------------------------------------------------------------------------
setup_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        # Without ensurepip (Debian/Ubuntu without python3-venv) fall back to a venv without its own pip.
        "$PYTHON" -m venv --system-site-packages "$VENV" \
            || "$PYTHON" -m venv --system-site-packages --without-pip "$VENV" || return 1
        echo '*' > "$VENV/.gitignore"  # keep the venv out of git status
    fi
    # Where the outer python finds torch, if anywhere (a venv or conda env that --system-site-packages
    # does not reach): make the new venv see that env's site-packages after its own.
    local torch_site
    torch_site=$("$PYTHON" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' \
        2> /dev/null) || torch_site=""
    if [ -n "$torch_site" ] && ! "$VENV/bin/python" -c 'import torch' 2> /dev/null; then
        local venv_site
        venv_site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "$torch_site" > "$venv_site/_outer_env.pth"
        echo "torch is in $torch_site (outside the venv's reach): linked with $venv_site/_outer_env.pth"
    fi
    local pip=("$VENV/bin/python" -m pip)
    if ! "${pip[@]}" --version > /dev/null 2>&1; then
        pip=("$PYTHON" -m pip --python "$VENV/bin/python")  # the outer pip, installing into the venv
    fi
    # Editable install without dependencies; without build isolation as a fallback (offline machines).
    "${pip[@]}" install -q --no-deps -e . 2> /dev/null || "${pip[@]}" install -q --no-deps --no-build-isolation -e . \
        || return 1
    # The requirements that are missing or unsatisfied, and a constraint that pins the torch present.
    "$VENV/bin/python" - > "$VENV/gpu-check-missing.txt" 3> "$VENV/gpu-check-constraints.txt" << 'EOF'
import importlib.metadata as md
import os
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
constraints = os.fdopen(3, "w")
for text in md.requires("complexity-sweep") or []:
    req = Requirement(text)
    if req.marker and not req.marker.evaluate({"extra": ""}):
        continue  # an extra (dev) requirement
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        have = None
    if req.name == "torch":
        if have:  # whatever torch is here (CUDA build or not) stays; step 4 says if it cannot use the GPU
            print(f"torch=={have}", file=constraints)
            continue
    if have is None or (req.specifier and not req.specifier.contains(have, prereleases=True)):
        print(text)
EOF
    if [ -s "$VENV/gpu-check-missing.txt" ]; then
        echo "installing the missing requirements: $(tr '\n' ' ' < "$VENV/gpu-check-missing.txt")"
        "${pip[@]}" install -q -c "$VENV/gpu-check-constraints.txt" -r "$VENV/gpu-check-missing.txt" || return 2
    fi
    "$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
"available:", torch.cuda.is_available())'
}
if [ "${GPU_CHECK_NO_VENV:-0}" = 1 ]; then
    PY=$(command -v "$PYTHON" || echo "$PYTHON")
    banner "1. no venv (GPU_CHECK_NO_VENV=1): $PY runs the project from $PWD"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    shim=$(mktemp -d)
    printf '#!/bin/sh\nexec "%s" -m sweep.cli "$@"\n' "$PY" > "$shim/sweep" && chmod +x "$shim/sweep"
    export PATH="$shim:$PATH"
    if "$PY" -c 'import ray, mlflow, pydantic, sweep.cli, torch; print("torch", torch.__version__, "CUDA",
torch.version.cuda, "available:", torch.cuda.is_available())'; then
        record venv ok "none (GPU_CHECK_NO_VENV=1): $PY, PYTHONPATH=$PYTHONPATH"
    else
        record venv FAIL "GPU_CHECK_NO_VENV=1 but $PY cannot import the requirements or sweep.cli"
    fi
else
    banner "1. venv $VENV (python: $(command -v "$PYTHON"))"
    setup_venv
    case $? in
        0) record venv ok "$VENV" ;;
        2) record venv FAIL "could not install: $(tr '\n' ' ' < "$VENV/gpu-check-missing.txt")" ;;
        *) record venv FAIL "could not create $VENV or install the project" ;;
    esac
    PY="$VENV/bin/python"
    export PATH="$VENV/bin:$PATH"
fi

# -- 2. the GPU -------------------------------------------------------------------------------------
banner "2. nvidia-smi"
if nvidia-smi; then
    record gpu ok "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
else
    record gpu FAIL "nvidia-smi failed"
fi

# -- 3. smoke sweep with fractional GPUs -------------------------------------------------------------
banner "3. sweep run smoke --set resources.gpu=0.25 --set pack=off --no-analyze"
if [ "${GPU_CHECK_SKIP_SWEEP:-0}" = 1 ]; then
    record sweep skip "GPU_CHECK_SKIP_SWEEP=1"
elif ! "$PY" -c 'import ray, mlflow, sweep.cli' 2> /dev/null; then
    record sweep FAIL "ray, mlflow or sweep.cli cannot be imported in $VENV"
else
    work=$(mktemp -d)
    start=$(date +%s)
    # A fresh local Ray (never a cluster that happens to run here), MLflow in $work/mlflow.db.
    if (cd "$work" && env -u RAY_ADDRESS -u MLFLOW_TRACKING_URI timeout 300 \
            sweep run smoke --set resources.gpu=0.25 --set pack=off --no-analyze); then
        record sweep ok "4 trials at 0.25 GPU each in $(( $(date +%s) - start )) s (records: $work)"
    else
        record sweep FAIL "exit status $? after $(( $(date +%s) - start )) s (logs: $work)"
    fi
fi

# -- 4. per-update timings on the GPU -----------------------------------------------------------------
banner "4. ms per SGD update on the GPU ($BUDGET updates each, after a warm-up)"
"$PY" - "$BUDGET" << 'EOF'
import importlib.util
import sys
import time

import torch

from sweep.trainer import TrainConfig, Trainer

budget = int(sys.argv[1])
if not torch.cuda.is_available():
    sys.exit("torch cannot use a GPU here (torch %s, CUDA %s)" % (torch.__version__, torch.version.cuda))
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
packed = importlib.util.find_spec("models.packed") is not None
layouts = [("unpacked", [0])] + ([("packed x32", list(range(32)))] if packed else [])
if not packed:
    print("models/packed.py not found: packed timings skipped")
print(f"{'C':>3}  {'layout':<11} {'ms/update/model':>15} {'ms/step':>9} {'wall s':>7} {'train_error':>11}")
for C in (1, 64):
    for label, seeds in layouts:
        warm = Trainer(TrainConfig(C=C, budget=20, eval_every=20, device="cuda"), seeds=seeds)
        for _ in warm.run():
            pass
        trainer = Trainer(TrainConfig(C=C, budget=budget, eval_every=budget, device="cuda"), seeds=seeds)
        start = time.perf_counter()
        last = None
        for last in trainer.run():
            pass
        wall = time.perf_counter() - start
        errors = [r.train_error for r in last.records] if last else []
        mean_err = sum(errors) / len(errors) if errors else float("nan")
        print(f"{C:>3}  {label:<11} {trainer.ms_per_update:>15.3f} {trainer.ms_per_update * len(seeds):>9.3f}"
              f" {wall:>7.1f} {mean_err:>11.3f}", flush=True)
EOF
if [ $? -eq 0 ]; then record timing ok "C=1 and C=64 on cuda"; else record timing FAIL "see step 4"; fi

banner "summary"
printf '%s\n' "${SUMMARY[@]}"
exit $failed
