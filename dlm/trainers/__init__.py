"""The trainers, laid out as in TRL: per method a config module (`sft_config`, `dpo_config`) and a trainer module
(`sft_trainer`, `dpo_trainer`); what they share, one job per module: `config` (`TrainerConfig`), `model` (the model
to train), `resuming`, `arguments` (`TrainingArguments` keywords), `eval_masks`, `logs` and `outputs` (saving)."""
