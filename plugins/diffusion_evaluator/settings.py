"""The Diffusion LLM Evaluator's form: `EvaluatorConfig` with the job's data settings. `python -m plugin_sdk forms`
writes index.json and task.yaml from it."""

from __future__ import annotations

from dataclasses import dataclass

from dlm.eval_config import EvaluatorConfig
from dlm.settings import setting
from plugins.job_settings import DatasetSettings, TaskModelAndAdapter


@dataclass
class EvaluatorSettings(DatasetSettings, EvaluatorConfig):
    """Every parameter of the plugin."""

    dataset_split: str = setting(
        "test",
        title="Split",
        group="data",
        help="Split to evaluate on; a dataset without that split uses its only split.",
    )
    num_samples: int = setting(
        100,
        title="Rows to evaluate",
        group="data",
        help="Evaluate the first this many rows of the split; 0: all of them.",
        minimum=0,
    )
    text_column: str = setting(
        "",
        title="Text column",
        group="data",
        help=(
            "Column scored by perplexity and accuracy. Empty: a 'text' column, else each row's prompt and reference."
        ),
    )
    prompt_column: str = setting(
        "",
        title="Prompt column",
        group="data",
        help=(
            "Column holding the prompt (text, or a list of chat messages). Empty: inferred (messages, "
            "instruction/input, prompt, question, query, problem)."
        ),
    )
    reference_column: str = setting(
        "",
        title="Reference-answer column",
        group="data",
        help=(
            "Column holding the expected answer for task_accuracy. Empty: inferred (the final assistant turn of "
            "chat data, else answer, reference, target, solution, output, completion, response, label)."
        ),
    )


SETTINGS = EvaluatorSettings
TASK_HOST_PARAMETERS = TaskModelAndAdapter
# the fields that open the task form, after the model: what is measured on which data (and against which models), then the sampler settings that decide speed and quality; the rest follow in ORDER
TASK_FIRST = (
    "dataset",
    "metrics",
    "tasks",
    "num_samples",
    "compare_with",
    "steps",
    "max_new_tokens",
    "block_length",
    "cache",
    "parallel_threshold",
)
# the order of the form (ui:order) and of --help's groups
ORDER = (
    "dataset",
    "dataset_split",
    "num_samples",
    "metrics",
    "tasks",
    "num_fewshot",
    "limit",
    "compare_with",
    "steps",
    "max_new_tokens",
    "block_length",
    "grow_canvas",
    "suffix_window",
    "temperature",
    "remasking",
    "cfg_scale",
    "alg",
    "alg_temp",
    "top_p",
    "top_k",
    "suppress_eos_confidence",
    "cache",
    "refresh_similarity",
    "parallel_threshold",
    "apply_chat_template",
    "mc_num",
    "mask_ratios",
    "max_length",
    "answer_extraction",
    "answer_regex",
    "text_column",
    "prompt_column",
    "reference_column",
    "batch_size",
    "dtype",
    "seed",
    "trust_remote_code",
)
