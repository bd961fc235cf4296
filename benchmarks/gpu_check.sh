#!/usr/bin/env bash
# One call on a lent GPU machine: build exprl._C with CUDA, run the CUDA tests and the benchmarks,
# and write everything (logs, JSON, a Markdown summary) into $OUT.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh      # from the repository root
#
# Needs: python with torch (CUDA build), triton, pytest, pytest-benchmark, transformers; nvcc for the
# extension (CUDA_HOME is autodetected). Needs no network: deepspeed for the training runs comes from the
# device wheels (EXPRL_DEVICE_WHEELS, else shared/device-wheels or ../shared/device-wheels). Each step has
# its own time limit (it took 134 s on the H200 on 2026-11-26, before the rollout benchmark and the
# training runs were added); a failing step is recorded and the next one runs.
set -u -o pipefail

OUT=${OUT:-$PWD/gpu_check_out}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SUMMARY="$OUT/summary.md"
STATUS="$OUT/status.txt"
: > "$STATUS"
start_all=$(date +%s)

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log, record the status
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/$name.log"
  timeout --kill-after=10 "$limit" "$@" >> "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$STATUS"
  return $rc
}

# CUDA_HOME: the first candidate with nvcc and the CUDA headers (an nvcc on PATH may be a wrapper script)
cuda_candidates=("${CUDA_HOME:-}" "${CUDA_PATH:-}")
if command -v nvcc > /dev/null 2>&1; then
  cuda_candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")")
fi
cuda_candidates+=(/usr/local/cuda /usr/local/cuda-13* /usr/local/cuda-12* /opt/cuda)
# pip wheels (nvidia-cuda-nvcc) put nvcc under site-packages/nvidia/*/bin
while IFS= read -r d; do cuda_candidates+=("$d"); done < <("$PYTHON" - 2> /dev/null <<'PY'
import glob, os, site
for root in site.getsitepackages():
    for nvcc in sorted(glob.glob(os.path.join(root, "nvidia", "*", "bin", "nvcc"))):
        print(os.path.dirname(os.path.dirname(nvcc)))
PY
)
unset CUDA_HOME
for d in "${cuda_candidates[@]}"; do
  if [ -n "$d" ] && [ -x "$d/bin/nvcc" ] && [ -f "$d/include/cuda_runtime.h" ]; then CUDA_HOME=$d; break; fi
done
if [ -n "${CUDA_HOME:-}" ]; then export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"; fi

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: ${EXPRL_COMMIT:-$(git rev-parse HEAD 2> /dev/null || echo unknown)}"
  echo "host: $(hostname)"
  echo "CUDA_HOME: ${CUDA_HOME:-not found}"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$PYTHON" - <<'PY'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton not installed")
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE")
PY
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

# 1. the extension, with CUDA when nvcc exists (the batching ops fall back to torch without it).
#    The system compiler when there is one: on the lent machine (2026-11-26) the image's default
#    /opt/gcc/bin/g++ wrapper built an extension whose C++ errors crashed the process (SIGSEGV) instead of
#    raising RuntimeError, while /usr/bin/g++ built a working one.
if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ] && [ -z "${EXPRL_KEEP_CC:-}" ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++
fi
if [ -n "${CUDA_HOME:-}" ]; then
  step build 180 env EXPRL_BUILD_CUDA=1 MAX_JOBS=16 "$PYTHON" setup.py build_ext --inplace
else
  echo "nvcc not found: building the CPU-only extension" | tee -a "$OUT/build.log"
  step build 180 env EXPRL_BUILD_CUDA=0 MAX_JOBS=16 "$PYTHON" setup.py build_ext --inplace
fi

# 2. the CUDA tests of every stream (tests that need deepspeed must skip without it)
#    one pytest process per file, so a crash in one file does not hide the results of the others
for f in tests/test_*.py; do
  grep -q "mark.cuda" "$f" || continue
  name=tests_cuda_$(basename "$f" .py)
  step "$name" 120 "$PYTHON" -m pytest -m cuda -p no:cacheprovider -q -rs --durations=5 \
    --junitxml="$OUT/$name.xml" "$f"
done

# 3a. Liger-Kernel, the loss benchmark's peer (the `bench` extra), from a local wheel when the machine has
#     no network: EXPRL_DEVICE_WHEELS, else shared/device-wheels or ../shared/device-wheels
for wheels in "${EXPRL_DEVICE_WHEELS:-}" "$PWD/shared/device-wheels" "$PWD/../shared/device-wheels"; do
  if [ -n "$wheels" ] && ls "$wheels"/liger_kernel-*.whl > /dev/null 2>&1; then
    step install_liger 60 "$PYTHON" -m pip install --no-index --no-deps "$wheels"/liger_kernel-*.whl
    break
  fi
done

# 3. every benchmarks/bench_*.py at its CUDA shapes (the loss at B=8 T=1024 V=151936 bf16 and three more
#    shapes), against eager PyTorch and peers; each writes its table into $OUT (benchmarks/common.py)
declare -A BENCH_LIMIT=([bench_loss]=300 [bench_batching]=90 [bench_train_step]=150 [bench_rollout]=180)
for f in benchmarks/bench_*.py; do
  name=$(basename "$f" .py)
  step "$name" "${BENCH_LIMIT[$name]:-120}" env EXPRL_BENCH_OUT="$OUT" "$PYTHON" -m pytest "$f" \
    --benchmark-enable -p no:cacheprovider -q -s --benchmark-json="$OUT/${name}_pytest_benchmark.json"
done

# 4. a 1-GPU DeepSpeed run of the tiny default (3 steps, no eval, no export), the sampler as the trainer
#    uses it: rollout/wasted_decode_share, time/generation and tokens/s land in its metrics.jsonl. DeepSpeed
#    and its missing dependencies come from the device wheels (no network), installed for this run only.
WHEELS=
for d in "${EXPRL_DEVICE_WHEELS:-}" "$PWD/shared/device-wheels" "$PWD/../shared/device-wheels"; do
  if [ -n "$d" ] && ls "$d"/deepspeed-*.whl > /dev/null 2>&1; then WHEELS=$d; break; fi
done
if [ -n "$WHEELS" ]; then
  SITE=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl \
    > "$OUT/train_deepspeed_install.log" 2>&1
  for mode in default compiled; do
    extra=()
    if [ "$mode" = compiled ]; then extra=(rollout.compile_decoding=true); fi
    step "train_deepspeed_1gpu_$mode" 150 env PYTHONPATH="$SITE:$PYTHONPATH" "$PYTHON" -m deepspeed.launcher.runner \
      --num_gpus 1 --module exprl.train steps=3 eval.enabled=false export=false progress=false \
      output_dir="$OUT/runs" name="tiny_$mode" ${extra[@]+"${extra[@]}"}
  done
else
  echo "train_deepspeed_1gpu skipped: no device-wheels folder (set EXPRL_DEVICE_WHEELS)" | tee -a "$STATUS"
fi

# 5. the summary: environment, step statuses, test counts, benchmark tables and the loss targets
"$PYTHON" - "$OUT" > "$SUMMARY" 2>> "$OUT/summary_errors.log" <<'PY'
import glob, json, os, sys, xml.etree.ElementTree as ET
out = sys.argv[1]
print("# exprl GPU check\n")
print("```\n" + open(os.path.join(out, "environment.txt")).read().strip() + "\n```\n")
print("## Steps\n")
for line in open(os.path.join(out, "status.txt")):
    print(f"- {line.strip()}")
print("\n## CUDA tests\n")
for junit in sorted(glob.glob(os.path.join(out, "tests_cuda_*.xml"))):
    suites = ET.parse(junit).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    name = os.path.basename(junit)[:-4]
    print(f"- {name}: {tot['tests']} collected, {tot['failures']} failed, {tot['errors']} errors, "
          f"{tot['skipped']} skipped (details: {name}.log)")
print("- a file whose step status is not rc=0 and that has no line here crashed (see its .log)")
for md in sorted(glob.glob(os.path.join(out, "bench_*.md"))):
    print("\n## " + os.path.basename(md) + "\n")
    print(open(md).read())
for metrics in sorted(glob.glob(os.path.join(out, "runs", "*", "metrics.jsonl"))):
    records = [json.loads(line) for line in open(metrics) if line.strip()]
    print(f"\n## {os.path.basename(os.path.dirname(metrics))}: 1-GPU DeepSpeed run of the tiny default\n")
    for r in records:
        print(f"- step {r['step']}: generation {r['time/generation']:.2f} s, training {r['time/training']:.2f} s, "
              f"{r['throughput/generated_tokens_per_s']:.0f} sampled tokens/s, "
              f"wasted decode share {r['rollout/wasted_decode_share']:.1%}")
# issue 12's targets on an H200, B=8 T=1024 V=151936 bf16, logits (B, T+1, V): absolute, and against Liger
targets = {"loss fwd+bwd": (2.0, 0.9), "logprobs fwd": (0.7, 1.0)}
for path in sorted(glob.glob(os.path.join(out, "bench_loss_cuda_*.json"))):
    rows = json.load(open(path))["results"]
    print("\n## Loss targets (fwd+bwd <= 2.0 ms and <= 0.9x Liger; logprobs fwd <= 0.7 ms and <= 1.0x Liger)\n")
    for r in rows:
        if r["backend"] == "triton" and r["layout"] == "(B,T+1,V)" and r["case"] in targets:
            limit_ms, limit_liger = targets[r["case"]]
            versus = r.get("liger_time_ratio")
            ok = (r["shape"] != "B=8 T=1024 V=151936" or r["median_ms"] <= limit_ms) and (
                versus is not None and versus <= limit_liger)
            print(f"- {r['case']} {r['shape']}: {r['median_ms']:.3f} ms, "
                  f"{'-' if versus is None else f'{versus:.2f}x'} Liger's time, "
                  f"{r['copy_fraction']:.0%} of copy bandwidth: {'MET' if ok else 'NOT MET'}")
PY
echo "total seconds: $(( $(date +%s) - start_all ))" | tee -a "$STATUS" >> "$SUMMARY"
cat "$SUMMARY"
