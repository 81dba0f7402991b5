#!/usr/bin/env bash
# The paper's accuracy table with lmms-eval: the full model vs the base method alone vs base + RESTORE, at 64 / 128
# / 192 visual tokens per image, on GQA, MMBench, MME, POPE, ScienceQA-IMG, SEED-Bench, TextVQA and OCRBench.
#
#   scripts/eval_paper.sh MODEL [OUT_DIR]       e.g. scripts/eval_paper.sh llava-hf/llava-1.5-7b-hf
#
# Needs `pip install "restore_ext[eval]"`, a GPU, and the benchmarks' datasets (lmms-eval fetches them from the
# Hugging Face Hub the first time). Each variant writes OUT_DIR/<variant>/; a variant already there is skipped, so
# a stopped run resumes. The last step prints one Markdown table (also OUT_DIR/summary.md): the headline metric
# per benchmark and the average score relative to the full model, as the paper reports it.
#
# Environment (optional):
#   FAMILY      llava_hf | qwen2_5_vl | qwen3_vl (default: guessed from MODEL); Qwen needs apply_restore's Qwen
#               support. "full" runs lmms-eval's own FAMILY model; the others run restore_FAMILY.
#   BASE        the base method (divprune); BUDGETS ("64 128 192"); TASKS (comma-separated lmms-eval tasks)
#   MODEL_ARGS  extra --model_args (default device_map=auto: lmms-eval 0.7.3 + transformers 5 need one)
#   LIMIT       samples per task, for a quick check of the whole pipeline
#   EXTRA_ARGS  more lmms-eval arguments (e.g. "--include_path DIR" for local tasks, "--log_samples")
#   LAUNCH      the lmms-eval command (default "python -m lmms_eval"; e.g. "accelerate launch
#               --num_processes 8 -m lmms_eval" for data parallel over 8 GPUs)
# MMBench's scorer asks GPT about answers it cannot parse (OPENAI_API_KEY); TASKS with mmbench_en_dev_static
# instead scores without it.
set -euo pipefail
MODEL=${1:?usage: scripts/eval_paper.sh MODEL [OUT_DIR]}
OUT=${2:-eval_results/$(basename "$MODEL")}
TASKS=${TASKS:-gqa,mmbench_en_dev,mme,pope,scienceqa_img,seedbench,textvqa_val,ocrbench}
BASE=${BASE:-divprune}
BUDGETS=${BUDGETS:-64 128 192}
MODEL_ARGS=${MODEL_ARGS:-device_map=auto}
LAUNCH=${LAUNCH:-python -m lmms_eval}
lower=$(echo "$MODEL" | tr '[:upper:]' '[:lower:]')
case "$lower" in
  *qwen3-vl*|*qwen3_vl*) guess=qwen3_vl ;;
  *qwen2.5-vl*|*qwen2_5_vl*) guess=qwen2_5_vl ;;
  *) guess=llava_hf ;;
esac
FAMILY=${FAMILY:-$guess}

run() {  # run VARIANT LMMS_MODEL EXTRA_MODEL_ARGS
  local dir="$OUT/$1"
  if compgen -G "$dir/*/*_results.json" >/dev/null; then
    echo "== $1: already in $dir, skipped"
    return
  fi
  echo "== $1: $2 pretrained=$MODEL,$MODEL_ARGS$3"
  # shellcheck disable=SC2086  # LAUNCH and EXTRA_ARGS are word lists
  $LAUNCH --model "$2" --model_args "pretrained=$MODEL,$MODEL_ARGS$3" --tasks "$TASKS" --batch_size 1 \
    --output_path "$dir" ${LIMIT:+--limit "$LIMIT"} ${EXTRA_ARGS:-}
}

run full "$FAMILY" ""
for k in $BUDGETS; do
  run "base-$k" "restore_$FAMILY" ",num_tokens=$k,base=$BASE,keep_ratio=1.0,calibrate=False"
  run "restore-$k" "restore_$FAMILY" ",num_tokens=$k,base=$BASE,keep_ratio=0.5"
done
python -m restore_ext.integrations.lmms_eval "$OUT" | tee "$OUT/summary.md"
