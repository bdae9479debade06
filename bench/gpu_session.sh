#!/usr/bin/env bash
# The GPU figures of docs/gpu.md, on a machine prepared by ../shared/device/pack-vllm.sh (source
# /tmp/carry/setup-vllm.sh first). One step per call, each logged to $OUT (default /tmp/out):
#   bash bench/gpu_session.sh engines   # tests/gpu/test_cuda_engines.py: bf16, FP8, FP8 KV, GPTQ int4, bnb on CUDA
#   bash bench/gpu_session.sh harness   # bench/harness_overhead.py: the gate vs bare LLM.generate, same prompts
#   bash bench/gpu_session.sh gate      # tests/gpu/test_gate_cuda.py: fixtures/gpu.toml end to end, twice
#   bash bench/gpu_session.sh long [N] [candidates]  # bench/long_context.py on fixtures/gpu-128k.toml, N per cell
#   bash bench/gpu_session.sh reports   # longquant baseline + run + report on a small CUDA plan: efficiency on CUDA
#   bash bench/gpu_session.sh divergence  # both signals on CUDA (vLLM top-k, transformers exact): docs/divergence.md
# A produced GPTQ int4 checkpoint carried from a CPU machine: LONGQUANT_GPU_GPTQ_W4A16=<folder>.
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/device.txt" 2>&1
case "${1:-}" in
  engines) python3 -m pytest tests/gpu/test_cuda_engines.py -v -s -p no:cacheprovider -rs > "$out/engines.log" 2>&1 ;;
  harness) python3 bench/harness_overhead.py --device cuda --tasks niah_single_2,niah_single_3 --buckets 4K,8K -n 50 \
             --engine-args '{"max_model_len": 8192}' --json "$out/harness.json" > "$out/harness.log" 2>&1 ;;
  gate) python3 -m pytest tests/gpu/test_gate_cuda.py -v -s -p no:cacheprovider > "$out/gate.log" 2>&1 ;;
  long) ready=(); [ -n "${LONGQUANT_GPU_GPTQ_W4A16:-}" ] && ready=(--checkpoint "gptq_w4a16=$LONGQUANT_GPU_GPTQ_W4A16")
        python3 bench/long_context.py fixtures/gpu-128k.toml --samples "${2:-4}" --out /tmp/long "${ready[@]}" \
          ${3:+--only "$3"} > "$out/long.log" 2>&1
        cp /tmp/long/figures.json /tmp/long/gate.log "$out/" 2>/dev/null ;;
  reports) mkdir -p /tmp/eff && cat > /tmp/eff/longquant.toml <<'TOML'
reference = "demo"
engine = "vllm"
device = "cuda"
engine_args = { max_model_len = 8192 }
tasks = ["niah_single_2", "niah_single_3"]
buckets = ["4K", "8K"]
languages = ["en", "es"]
samples = 20
seed = 0
baseline_dir = "/tmp/eff/baselines"
results_dir = "/tmp/eff/results"

[[candidates]]
name = "fp8"
recipe = "fp8-inflight"
engine_args = { enforce_eager = true }

[[candidates]]
name = "bnb_nf4"
recipe = "bnb-nf4"
engine = "hf"
engine_args = { batch_size = 40 }
TOML
        { python3 -m longquant_checks.cli baseline --config /tmp/eff/longquant.toml; echo "baseline exit $?"
          python3 -m longquant_checks.cli run --config /tmp/eff/longquant.toml; echo "run exit $?"
          python3 -m longquant_checks.cli report /tmp/eff/results --format all -o "$out/reports"; echo "report exit $?"
        } > "$out/reports.log" 2>&1
        cp -r /tmp/eff/results/efficiency "$out/" 2>/dev/null ;;
  divergence) mkdir -p /tmp/div && cat > /tmp/div/longquant.toml <<'TOML'
reference = "demo"
engine = "vllm"
device = "cuda"
engine_args = { max_model_len = 8192 }
tasks = ["niah_single_2", "niah_single_3"]
buckets = ["4K", "8K"]
languages = ["en", "es", "ru"]
samples = 20
seed = 0
baseline_dir = "/tmp/div/baselines"
results_dir = "/tmp/div/results"
divergence = { enabled = true }

[[candidates]]
name = "fp8"
recipe = "fp8-inflight"
engine_args = { enforce_eager = true }

[[candidates]]
name = "bnb_nf4"
recipe = "bnb-nf4"
engine = "hf"
engine_args = { batch_size = 40 }
TOML
        { python3 -m longquant_checks.cli baseline --config /tmp/div/longquant.toml; echo "baseline exit $?"
          python3 -m longquant_checks.cli noise-floor --config /tmp/div/longquant.toml; echo "floor exit $?"
          python3 -m longquant_checks.cli run --config /tmp/div/longquant.toml -- --lq-report=/tmp/div/summary.json
          echo "run exit $?"
          python3 -m longquant_checks.cli report /tmp/div/results --format all -o "$out/div-reports"; echo "report exit $?"
        } > "$out/divergence.log" 2>&1
        cp /tmp/div/summary.json /tmp/div/baselines/*/*/noise_floor.json "$out/" 2>/dev/null ;;
  *) echo "usage: $0 engines|harness|gate|long [N]|reports|divergence"; exit 2 ;;
esac
code=$?
tail -n 40 "$out/${1}.log"
exit $code
