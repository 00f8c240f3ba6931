#!/usr/bin/env bash
# The seed workflow in one run: pre-train a causal (AR) and a diffusion (LLaDA) model of one size on the same
# corpus, fine-tune both on Alpaca-format data, and evaluate them side by side in one report.
#
#   examples/seed_workflow.sh CORPUS ALPACA.jsonl EVAL.jsonl [WORKSPACE]
#
# CORPUS: a text/.gz/JSONL file, a folder of them, or hf:<dataset id> (online). ALPACA.jsonl: instruction/input/output
# rows. EVAL.jsonl: held-out rows in the same format (perplexity and task accuracy). Settings from the environment:
# SIZE (small), PRETRAIN_STEPS (5000), SFT_STEPS (1000), MAX_LENGTH (256), BATCH (16), VOCAB (32000),
# DEVICE (auto), EVAL_SAMPLES (200), MC_NUM (32), and EXTRA: more `--set key=value` flags for every training job.
set -euo pipefail
corpus=$1 alpaca=$2 eval_data=$3 workspace=${4:-./workspace}
size=${SIZE:-small}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}

run() { "$python" -m plugin_sdk run "$@" --workspace "$workspace"; }
# shellcheck disable=SC2086  # EXTRA is a list of flags
common=(--set train_device="${DEVICE:-auto}" --set max_length="${MAX_LENGTH:-256}" --set batch_size="${BATCH:-16}"
        --set num_train_epochs=0 --set wandb_group="seed-$size" ${EXTRA:-})

for family in ar llada; do
  # 1. pre-train from scratch: a tokenizer trained on the corpus, the corpus tokenized once (reused by the other
  #    family's job only if the tokenizers match), LoRA off and the pre-training recipe's defaults
  run diffusion_llm_trainer "${common[@]}" --set train_mode=pretrain --set model_name="$size-$family" \
    --set training_method="$family" --set corpus="$corpus" --set tokenizer_vocab_size="${VOCAB:-32000}" \
    --set train_steps="${PRETRAIN_STEPS:-5000}" --set adaptor_name=pretrained
  # 2. supervised fine-tuning of every weight on the Alpaca-format data
  run diffusion_llm_trainer "${common[@]}" --set model_name="$workspace/models/$size-${family}_pretrained" \
    --set training_method="$family" --set dataset="$alpaca" --set lora=false --set learning_rate=1e-4 \
    --set warmup_ratio=0.03 --set train_steps="${SFT_STEPS:-1000}" --set adaptor_name=sft
done

# 3. both fine-tuned models in one evaluation: perplexity (an ELBO bound for the diffusion model, exact for the AR
#    one), task accuracy and speed, side by side in one table, chart and report
run diffusion_evaluator --set model_name="$workspace/models/$size-llada_pretrained_sft" \
  --set compare_with="$workspace/models/$size-ar_pretrained_sft" --set dataset="$eval_data" \
  --set metrics=perplexity,task_accuracy,speed --set num_samples="${EVAL_SAMPLES:-200}" \
  --set mc_num="${MC_NUM:-32}" --set max_new_tokens=64 --set steps=64 --set block_length=32 \
  --set eval_name="seed-$size"
