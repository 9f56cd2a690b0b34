#!/usr/bin/env bash
# The prepared GPU check: core tests on the GPU, the benchmark suite's GPU rows
# and one paper-scale VGG-11 EB vs WORM pair, every figure into one folder.
#
#   bash benchmarks/gpu_check.sh prepare          # here: data subset + wheels
#   bash benchmarks/gpu_check.sh run "$OUT"       # on the GPU machine (< 9 min)
#   bash benchmarks/gpu_check.sh dry-run DIR      # on a CPU: the same stages, tiny
#
# The device machine has jax, flax, optax and orbax but no network; `prepare`
# writes what it lacks into folders that .gitignore ignores and `carry` takes:
#   .gpu/  a class-balanced CIFAR-10 subset (12,500 train / 2,000 test images;
#          the full 170 MB tarball is over the 64 MiB transfer limit)
#   .whl/  the ml-collections wheel (pure Python)
# Device call: carry [".gpu", ".whl"], command `bash benchmarks/gpu_check.sh run "$OUT"`.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
out=${2:-${OUT:-gpu_check_out}}
py=${PYTHON:-python3}

case "$mode" in
  prepare)
    source=${CIFAR10:-../shared/data/cifar10/cifar-10-python.tar.gz}
    "$py" -m benchmarks.gpu_data --source "$source" --out .gpu --train 12500 --test 2000
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux2014_x86_64 -d .whl \
      "ml-collections==$("$py" -c 'import importlib.metadata as m; print(m.version("ml-collections"))')"
    du -sh .gpu .whl
    exit 0 ;;
  run|dry-run) ;;
  *) echo "usage: $0 prepare | run OUT | dry-run OUT" >&2; exit 2 ;;
esac

mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site .whl/*.whl && export PYTHONPATH=/tmp/gpu_check_site:${PYTHONPATH:-}
fi
work=$(mktemp -d)
core_tests="tests/test_masks.py tests/test_early_bird.py tests/test_truncation.py
  tests/test_selectors.py tests/test_multi_search.py tests/test_recalibrate.py"
if [ "$mode" = run ]; then
  tests_args="-q $core_tests"
  bench_args="--size large --only train_step,torch,worm_overhead"
  # Paper scale: full width, batch 32, the paper's recipe; data: the subset above.
  vgg_args="--config=configs/vgg11_worm.py --config.data.dir=.gpu
    --config.experiment.schedules=none,worm --config.progress_bar=False"
  limits=(150 240 200)
else
  export JAX_PLATFORMS=cpu
  tests_args="-q tests/test_masks.py"
  bench_args="--size tiny --only train_step,worm_overhead"
  vgg_args="--config=configs/quickstart.py --config.search.max_epochs=2
    --config.retrain.max_epochs=1 --config.search.window=2 --config.data.train_limit=200
    --config.progress_bar=False"
  limits=(300 300 300)
fi

stage() {  # name, time limit (s), command...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - start ))" | tee -a "$out/stages.txt"
}

: > "$out/stages.txt"
{ command -v nvidia-smi >/dev/null && nvidia-smi -L
  "$py" -c 'import jax; print(jax.__version__, jax.devices())'; } > "$out/device.txt" 2>&1
# shellcheck disable=SC2086  # the argument lists are meant to split
stage tests "${limits[0]}" "$py" -m pytest $tests_args
# shellcheck disable=SC2086
stage bench "${limits[1]}" "$py" -m benchmarks.run_all $bench_args --out "$work/bench"
cp "$work/bench/results.md" "$out/bench_results.md" 2>/dev/null
cp "$work/bench/results.json" "$out/bench_results.json" 2>/dev/null
# shellcheck disable=SC2086
stage vgg11_pair "${limits[2]}" "$py" launch.py $vgg_args --workdir="$work/vgg11" \
  --jax_cache_dir="$work/xla"
cp "$work/vgg11/summary.json" "$out/vgg11_summary.json" 2>/dev/null
rm -rf "$work"
cat "$out/stages.txt"
! grep -qv ' rc=0 ' "$out/stages.txt"
