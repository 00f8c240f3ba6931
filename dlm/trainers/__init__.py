"""The trainers, laid out as in TRL: per method a config module (`sft_config`, `dpo_config`) and a trainer module
(`sft_trainer`, `dpo_trainer`), and `common` for what they share (`TrainerConfig`, loading for training, resuming,
saving the result)."""
