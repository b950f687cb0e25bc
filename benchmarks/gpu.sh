#!/usr/bin/env bash
# The GPU check: run once, from the repository root, on a machine with one NVIDIA GPU and no network.
#
#   bash benchmarks/gpu.sh                      # outputs under ${OUT:-/tmp/gpu_out}
#
# 1. Records the machine (nvidia-smi -L, the Python packages, jax.print_environment_info()).
# 2. Exits with a message (status 2) unless JAX's default backend is a GPU: it installs nothing,
#    so the machine's Python must already have jax with CUDA, optax and numpy.
# 3. Writes the CPU's mask digests (JAX_PLATFORMS=cpu, on this machine's CPU), then recomputes
#    them on the GPU and compares (benchmarks/gpu_masks.py --check: mask bits exact, floats allclose).
# 4. jdrop's Pallas attention kernels (benchmarks/pallas_gpu.py): "pallas" against "xla", the formula
#    and the CPU's mask bits, then forward + backward time and temporary memory at T = 4096, 1024, 16384
#    (batch 4, 16 heads, head size 64 and 128, bfloat16, causal and not) against cuDNN, jax.nn, Flax
#    and jdrop's XLA tiles, then the lm1b transformer step at a GPU size, as its budget allows.
# 5. Runs benchmarks/run.py --quick one section at a time on the GPU (mask, sizes, train, attention
#    if run.py --help lists it, then variants, memory, dropin), then a measured pass of mask and
#    sizes if time is left; needs flax, equinox and dm-haiku, and is skipped with a message without.
#
# Every step runs under `timeout`, capped by what is left of GPU_BUDGET_S (default 450 s), so the
# whole script ends in under 8 minutes; a step that fails or times out is recorded and the next runs.
# Exit status: 0 if every step that ran passed, 1 if any failed (see $OUT/summary.txt), 2 without a GPU.
#
# Environment: OUT (outputs), SCRATCH (the CPU's full floating outputs, ~85 MiB, kept out of OUT),
# PYTHON (the interpreter, default python), GPU_BUDGET_S, MEASURE=0 to skip the measured pass.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/gpu_out}
SCRATCH=${SCRATCH:-/tmp/gpu_scratch}
PY=${PYTHON:-python}
BUDGET=${GPU_BUDGET_S:-450}
MEASURE=${MEASURE:-1}
mkdir -p "$OUT" "$SCRATCH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" # this checkout's jdrop, not an installed one
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/gpu.log") 2>&1

FAILED=()
SKIPPED=()

# capped N: N seconds, or fewer if the budget is nearly spent (15 s kept for timeout's --kill-after
# and the summary); 0 when under 20 s would be left.
capped() {
  local left=$((BUDGET - SECONDS - 15))
  if ((left < 20)); then
    echo 0
  elif (($1 > left)); then
    echo "$left"
  else
    echo "$1"
  fi
}

# step NAME LIMIT_S CMD...: CMD under timeout (at most LIMIT_S, less if the budget is nearly spent),
# its output also in $OUT/NAME.txt; a failure is recorded, not fatal.
step() {
  local name=$1 limit rc start
  limit=$(capped "$2")
  shift 2
  if ((limit == 0)); then
    echo "== $name: skipped, $((BUDGET - SECONDS)) s left of the ${BUDGET} s budget"
    SKIPPED+=("$name (no time left)")
    return 0
  fi
  echo
  echo "== $name (limit ${limit} s; ${SECONDS} s elapsed): $*"
  start=$SECONDS
  set +e
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  rc=${PIPESTATUS[0]}
  set -e
  echo "== $name: exit status $rc after $((SECONDS - start)) s"
  if ((rc != 0)); then
    if ((rc == 124 || rc == 137)); then
      FAILED+=("$name (timed out after ${limit} s)")
    else
      FAILED+=("$name (exit status $rc)")
    fi
  fi
  return 0
}

echo "== jdrop GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), in $ROOT, outputs in $OUT"
echo "git: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo 'not a git checkout')"

# --- 1. The machine ------------------------------------------------------------------------------
{
  echo "\$ nvidia-smi -L"
  timeout 30 nvidia-smi -L 2>&1 || echo "(nvidia-smi -L failed or is missing)"
  echo "\$ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv"
  timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
  echo "\$ $PY --version; uname -a; nproc"
  "$PY" --version 2>&1 || true
  uname -a
  nproc
  echo "\$ $PY -m pip list (jax, CUDA and the benchmarks' libraries)"
  timeout 60 "$PY" -m pip list 2>/dev/null |
    grep -iE '^(jax|jaxlib|jax-cuda|jax_cuda|nvidia-|flax|optax|equinox|dm-haiku|numpy|ml.dtypes|chex) ' ||
    echo "(pip list failed or lists none of them)"
} | tee "$OUT/machine.txt"

# --- 2. Is there a GPU? ------------------------------------------------------------------------------
echo
echo "\$ $PY -c \"import jax; print(jax.devices())\""
set +e
devices=$(timeout 120 "$PY" -c "import jax; print(jax.default_backend(), jax.devices())" 2>"$OUT/jax_devices.stderr")
rc=$?
set -e
echo "${devices:-(nothing)} (exit status $rc)"
if ((rc != 0)) || [[ ${devices%% *} != gpu ]]; then
  echo
  echo "gpu.sh: NO GPU. JAX's default backend here is not a GPU (jax says: ${devices:-nothing; see below})."
  echo "This script installs nothing (no network): it needs a Python with jax for CUDA, e.g."
  echo "'pip install -U \"jax[cuda12]\"' done beforehand. Stopping before any check or benchmark."
  tail -n 5 "$OUT/jax_devices.stderr" 2>/dev/null || true
  echo "no GPU: ${devices:-jax import failed}" >"$OUT/summary.txt"
  exit 2
fi

step versions 90 "$PY" -c "
import jax, jdrop, numpy, optax
print('jdrop', jdrop.__version__, 'from', jdrop.__file__)
print('jax', jax.__version__, 'numpy', numpy.__version__, 'optax', optax.__version__)
jax.print_environment_info()
"
if ! grep -q "from $ROOT/jdrop/" "$OUT/versions.txt"; then
  echo "gpu.sh: jdrop did not import from $ROOT (see $OUT/versions.txt); the checks below test another copy."
fi

# --- 3. Mask digests: the CPU's, then the GPU's against them --------------------------------------
rm -f "$OUT/cpu_masks.json" "$OUT/gpu_masks.json" # never check against an earlier run's reference
step cpu_masks 150 env JAX_PLATFORMS=cpu "$PY" benchmarks/gpu_masks.py \
  --write "$OUT/cpu_masks.json" --values "$SCRATCH/cpu_masks.npz"
if [[ -s $OUT/cpu_masks.json ]]; then
  step gpu_masks 150 "$PY" benchmarks/gpu_masks.py \
    --check "$OUT/cpu_masks.json" --values "$SCRATCH/cpu_masks.npz" --platform gpu
else # no reference: at least record the GPU's digests
  SKIPPED+=("gpu_masks --check (no CPU reference)")
  step gpu_masks_write 150 "$PY" benchmarks/gpu_masks.py \
    --write "$OUT/gpu_masks.json" --values "$SCRATCH/gpu_masks.npz" --platform gpu
fi

# --- 4. jdrop's Pallas attention kernels ----------------------------------------------------------
# First among the benchmarks: the kernels are what GPU users run. The script keeps to its own budget
# (10 s under the step's limit), so it writes its tables however far it got.
pallas_limit=$(capped 210)
if ((pallas_limit > 30)); then
  step pallas "$pallas_limit" "$PY" benchmarks/pallas_gpu.py --out "$OUT/pallas.md" --budget $((pallas_limit - 10))
else
  SKIPPED+=("pallas (no time left)")
fi

# --- 5. Benchmarks on the GPU --------------------------------------------------------------------
bench_ok=1
if (($(capped 120) == 0)); then
  SKIPPED+=("benchmarks (no time left)")
  bench_ok=0
elif ! timeout "$(capped 120)" "$PY" -c "import flax, equinox, haiku, optax" >"$OUT/bench_imports.txt" 2>&1; then
  echo "gpu.sh: benchmarks/run.py needs flax, equinox and dm-haiku (pip install -e '.[bench]'), not importable here:"
  tail -n 3 "$OUT/bench_imports.txt"
  SKIPPED+=("benchmarks (flax, equinox or haiku missing)")
  bench_ok=0
fi
sections=""
if ((bench_ok)) && (($(capped 120) == 0)); then
  SKIPPED+=("benchmarks (no time left)")
  bench_ok=0
fi
if ((bench_ok)); then
  set +e
  help=$(timeout "$(capped 120)" "$PY" benchmarks/run.py --help 2>&1)
  rc=$?
  set -e
  printf '%s\n' "$help" >"$OUT/run_help.txt"
  # The sections are the choices of --skip/--only: the first {a,b,...} in the usage line.
  sections=$(printf '%s\n' "$help" | grep -oE '\{[a-z_]+(,[a-z_]+)+\}' | head -n 1 | tr -d '{}' | tr ',' ' ' || true)
  if ((rc != 0)) || [[ -z $sections ]]; then
    echo "gpu.sh: benchmarks/run.py --help failed (exit status $rc) or lists no sections; see $OUT/run_help.txt"
    FAILED+=("run.py --help (exit status $rc)")
    bench_ok=0
  else
    echo "run.py sections: $sections"
  fi
fi
has_section() { [[ " $sections " == *" $1 "* ]]; }

if ((bench_ok)); then
  # In order of priority: what the budget cannot fit is skipped, last first.
  for spec in mask:60 sizes:75 train:60 attention:120 variants:60 memory:60 dropin:150; do
    section=${spec%%:*}
    limit=${spec##*:}
    if has_section "$section"; then
      step "bench_$section" "$limit" "$PY" benchmarks/run.py --only "$section" --quick --out "$OUT/bench_$section.md"
    else
      echo "== bench_$section: not among run.py's sections ($sections); skipped"
      SKIPPED+=("bench_$section (not in run.py --help)")
    fi
  done
  # A measured (not --quick) pass of the headline tables, if at least 2 minutes are left.
  if ((MEASURE)) && has_section mask && has_section sizes && ((BUDGET - SECONDS >= 135)); then
    step bench_measured "$BUDGET" "$PY" benchmarks/run.py --only mask sizes --rounds 5 \
      --out "$OUT/bench_measured.md"
  else
    SKIPPED+=("bench_measured (MEASURE=$MEASURE, $((BUDGET - SECONDS)) s left)")
  fi
fi

# --- Summary ------------------------------------------------------------------------------------
{
  echo "jdrop GPU check: ${SECONDS} s of the ${BUDGET} s budget; $(cut -d' ' -f2- <<<"$devices")"
  if [[ -f $OUT/gpu_masks.txt ]]; then
    echo "masks, GPU against CPU: $(grep -E '^(ALL MATCH|MISMATCH)' "$OUT/gpu_masks.txt" || echo 'no verdict (see gpu_masks.txt)')"
  fi
  if [[ -f $OUT/pallas.txt ]]; then
    echo "Pallas kernels against xla, the formula and the CPU's masks: $(grep -E '^(ALL MATCH|MISMATCH)' "$OUT/pallas.txt" || echo 'no verdict (see pallas.txt)')"
  fi
  echo "failed: ${#FAILED[@]}"
  for item in ${FAILED[@]+"${FAILED[@]}"}; do echo "  $item"; done
  echo "skipped: ${#SKIPPED[@]}"
  for item in ${SKIPPED[@]+"${SKIPPED[@]}"}; do echo "  $item"; done
} | tee "$OUT/summary.txt"
ls -l "$OUT"
((${#FAILED[@]} == 0))
