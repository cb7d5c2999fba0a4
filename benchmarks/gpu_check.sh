#!/bin/bash
# The GPU checks of issues 13 and 16 as one run (a lent GPU machine, about 10 minutes; nothing is downloaded):
#   bench_gpu.py        the scan's phases on SD1.5- and SDXL-sized models, mixed precision (the default) and fp32
#   bench_attack_batch  cross-LoRA batched decoding of the toy attack on the GPU (chooses --attack-batch's default)
# Each step has its own time limit, so one slow step leaves the others' figures. Output: ${OUT:-build/gpu}/*.log
#   bash benchmarks/gpu_check.sh
set -u
out=${OUT:-build/gpu}
mkdir -p "$out"
python=${PYTHON:-python}
run() {  # run NAME SECONDS COMMAND...: the command's output in $out/NAME.log, its exit status at the end
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee "$out/$name.log"
    timeout "$limit" "$@" >> "$out/$name.log" 2>&1
    echo "== exit $?" | tee -a "$out/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.log" 2>&1
run bench_gpu 300 "$python" benchmarks/bench_gpu.py --families sd1,sdxl --loras 3
run bench_gpu_fp32 120 env LORA_AUDIT_PRECISION=fp32 "$python" benchmarks/bench_gpu.py --families sd1 --loras 2
run attack_batch 120 "$python" benchmarks/bench_attack_batch.py --device cuda --batches 1,2,4,8,16 --loras 32
tail -n 12 "$out"/*.log
