"""`EvaluatorConfig`: the settings of an evaluation (the evaluator plugin's parameters, same names), each field with
its form (`dlm.settings.setting`); it builds the `EvalSettings` and `SamplerSettings` the evaluation takes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dlm.evaluation.settings import METRIC_GROUPS, EvalSettings
from dlm.generation import AUTO_CACHE, SamplerSettings
from dlm.loading import DTYPES
from dlm.metrics.text import ANSWER_EXTRACTIONS, compile_answer_regex
from dlm.samplers.common import CACHE_MODES
from dlm.samplers.elastic import REFRESH_SIMILARITY
from dlm.samplers.llada import LLADA_REMASKING
from dlm.settings import FromParams, setting

# lm-eval tasks the workbench's form suggests (a terminal run accepts any task name)
SUGGESTED_TASKS = tuple(
    """
gsm8k minerva_math humaneval mbpp mmlu arc_challenge hellaswag winogrande piqa lambada_openai bbh triviaqa
arc_easy leaderboard_bbh mmlu_abstract_algebra mmlu_anatomy mmlu_astronomy mmlu_business_ethics
mmlu_clinical_knowledge mmlu_college_biology mmlu_college_chemistry mmlu_college_computer_science
mmlu_college_mathematics mmlu_college_medicine mmlu_college_physics mmlu_computer_security
mmlu_conceptual_physics mmlu_continuation_abstract_algebra mmlu_continuation_anatomy
mmlu_continuation_astronomy mmlu_continuation_business_ethics mmlu_continuation_clinical_knowledge
mmlu_continuation_college_biology mmlu_continuation_college_chemistry
mmlu_continuation_college_computer_science mmlu_continuation_college_mathematics
mmlu_continuation_college_medicine mmlu_continuation_college_physics mmlu_continuation_computer_security
mmlu_continuation_conceptual_physics mmlu_continuation_econometrics mmlu_continuation_electrical_engineering
mmlu_continuation_elementary_mathematics mmlu_continuation_formal_logic mmlu_continuation_global_facts
mmlu_continuation_high_school_biology mmlu_continuation_high_school_chemistry
mmlu_continuation_high_school_computer_science mmlu_continuation_high_school_european_history
mmlu_continuation_high_school_geography mmlu_continuation_high_school_government_and_politics
mmlu_continuation_high_school_macroeconomics mmlu_continuation_high_school_mathematics
mmlu_continuation_high_school_microeconomics mmlu_continuation_high_school_physics
mmlu_continuation_high_school_psychology mmlu_continuation_high_school_statistics
mmlu_continuation_high_school_us_history mmlu_continuation_high_school_world_history
mmlu_continuation_human_aging mmlu_continuation_human_sexuality mmlu_continuation_international_law
mmlu_continuation_jurisprudence mmlu_continuation_logical_fallacies mmlu_continuation_machine_learning
mmlu_continuation_management mmlu_continuation_marketing mmlu_continuation_medical_genetics
mmlu_continuation_miscellaneous mmlu_continuation_moral_disputes mmlu_continuation_moral_scenarios
mmlu_continuation_nutrition mmlu_continuation_philosophy mmlu_continuation_prehistory
mmlu_continuation_professional_accounting mmlu_continuation_professional_law
mmlu_continuation_professional_medicine mmlu_continuation_professional_psychology
mmlu_continuation_public_relations mmlu_continuation_security_studies mmlu_continuation_sociology
mmlu_continuation_us_foreign_policy mmlu_continuation_virology mmlu_continuation_world_religions
mmlu_econometrics mmlu_electrical_engineering mmlu_elementary_mathematics
mmlu_flan_n_shot_loglikelihood_abstract_algebra mmlu_flan_n_shot_loglikelihood_anatomy
mmlu_flan_n_shot_loglikelihood_astronomy mmlu_flan_n_shot_loglikelihood_business_ethics
mmlu_flan_n_shot_loglikelihood_clinical_knowledge mmlu_flan_n_shot_loglikelihood_college_biology
mmlu_flan_n_shot_loglikelihood_college_chemistry mmlu_flan_n_shot_loglikelihood_college_computer_science
mmlu_flan_n_shot_loglikelihood_college_mathematics mmlu_flan_n_shot_loglikelihood_college_medicine
mmlu_flan_n_shot_loglikelihood_college_physics mmlu_flan_n_shot_loglikelihood_computer_security
mmlu_flan_n_shot_loglikelihood_conceptual_physics mmlu_flan_n_shot_loglikelihood_econometrics
mmlu_flan_n_shot_loglikelihood_electrical_engineering mmlu_flan_n_shot_loglikelihood_elementary_mathematics
mmlu_flan_n_shot_loglikelihood_formal_logic mmlu_flan_n_shot_loglikelihood_global_facts
mmlu_flan_n_shot_loglikelihood_high_school_biology mmlu_flan_n_shot_loglikelihood_high_school_chemistry
mmlu_flan_n_shot_loglikelihood_high_school_computer_science
mmlu_flan_n_shot_loglikelihood_high_school_european_history
mmlu_flan_n_shot_loglikelihood_high_school_geography
mmlu_flan_n_shot_loglikelihood_high_school_government_and_politics
mmlu_flan_n_shot_loglikelihood_high_school_macroeconomics
mmlu_flan_n_shot_loglikelihood_high_school_mathematics
mmlu_flan_n_shot_loglikelihood_high_school_microeconomics mmlu_flan_n_shot_loglikelihood_high_school_physics
mmlu_flan_n_shot_loglikelihood_high_school_psychology mmlu_flan_n_shot_loglikelihood_high_school_statistics
mmlu_flan_n_shot_loglikelihood_high_school_us_history
mmlu_flan_n_shot_loglikelihood_high_school_world_history mmlu_flan_n_shot_loglikelihood_human_aging
mmlu_flan_n_shot_loglikelihood_human_sexuality mmlu_flan_n_shot_loglikelihood_international_law
mmlu_flan_n_shot_loglikelihood_jurisprudence mmlu_flan_n_shot_loglikelihood_logical_fallacies
mmlu_flan_n_shot_loglikelihood_machine_learning mmlu_flan_n_shot_loglikelihood_management
mmlu_flan_n_shot_loglikelihood_marketing mmlu_flan_n_shot_loglikelihood_medical_genetics
mmlu_flan_n_shot_loglikelihood_miscellaneous mmlu_flan_n_shot_loglikelihood_moral_disputes
mmlu_flan_n_shot_loglikelihood_moral_scenarios mmlu_flan_n_shot_loglikelihood_nutrition
mmlu_flan_n_shot_loglikelihood_philosophy mmlu_flan_n_shot_loglikelihood_prehistory
mmlu_flan_n_shot_loglikelihood_professional_accounting mmlu_flan_n_shot_loglikelihood_professional_law
mmlu_flan_n_shot_loglikelihood_professional_medicine mmlu_flan_n_shot_loglikelihood_professional_psychology
mmlu_flan_n_shot_loglikelihood_public_relations mmlu_flan_n_shot_loglikelihood_security_studies
mmlu_flan_n_shot_loglikelihood_sociology mmlu_flan_n_shot_loglikelihood_us_foreign_policy
mmlu_flan_n_shot_loglikelihood_virology mmlu_flan_n_shot_loglikelihood_world_religions mmlu_formal_logic
mmlu_global_facts mmlu_high_school_biology mmlu_high_school_chemistry mmlu_high_school_computer_science
mmlu_high_school_european_history mmlu_high_school_geography mmlu_high_school_government_and_politics
mmlu_high_school_macroeconomics mmlu_high_school_mathematics mmlu_high_school_microeconomics
mmlu_high_school_physics mmlu_high_school_psychology mmlu_high_school_statistics mmlu_high_school_us_history
mmlu_high_school_world_history mmlu_human_aging mmlu_human_sexuality mmlu_international_law
mmlu_jurisprudence mmlu_logical_fallacies mmlu_machine_learning mmlu_management mmlu_marketing
mmlu_medical_genetics mmlu_miscellaneous mmlu_moral_disputes mmlu_moral_scenarios mmlu_nutrition
mmlu_philosophy mmlu_prehistory mmlu_professional_accounting mmlu_professional_law
mmlu_professional_medicine mmlu_professional_psychology mmlu_public_relations mmlu_security_studies
mmlu_sociology mmlu_us_foreign_policy mmlu_virology mmlu_world_religions hellaswag_ar hellaswag_bn
hellaswag_ca hellaswag_da hellaswag_de hellaswag_es hellaswag_eu hellaswag_fr hellaswag_gu hellaswag_hi
hellaswag_hr hellaswag_hu hellaswag_hy hellaswag_id hellaswag_it hellaswag_kn hellaswag_ml hellaswag_mr
hellaswag_ne hellaswag_nl hellaswag_pt hellaswag_ro hellaswag_ru hellaswag_sk hellaswag_sr hellaswag_sv
hellaswag_ta hellaswag_te hellaswag_uk hellaswag_vi arc_es arc_eu arc_fr arc_gu arc_hi arc_hr arc_hu arc_hy
arc_id arc_it arc_kn arc_ml arc_mr arc_ne arc_nl arc_pt arc_ro arc_ru arc_sk arc_sr arc_sv arc_ta arc_te
arc_uk arc_vi arc_zh arc_challenge_mt_da arc_challenge_mt_de arc_challenge_mt_el arc_challenge_mt_es
arc_challenge_mt_fi arc_challenge_mt_hu arc_challenge_mt_is arc_challenge_mt_it arc_challenge_mt_nb
arc_challenge_mt_pl arc_challenge_mt_pt arc_challenge_mt_sv leaderboard_bbh_boolean_expressions
leaderboard_bbh_causal_judgement leaderboard_bbh_date_understanding leaderboard_bbh_disambiguation_qa
leaderboard_bbh_formal_fallacies leaderboard_bbh_geometric_shapes leaderboard_bbh_hyperbaton
leaderboard_bbh_logical_deduction_five_objects leaderboard_bbh_logical_deduction_seven_objects
leaderboard_bbh_logical_deduction_three_objects leaderboard_bbh_movie_recommendation
leaderboard_bbh_navigate leaderboard_bbh_object_counting leaderboard_bbh_penguins_in_a_table
leaderboard_bbh_reasoning_about_colored_objects leaderboard_bbh_ruin_names
leaderboard_bbh_salient_translation_error_detection leaderboard_bbh_snarks
leaderboard_bbh_sports_understanding leaderboard_bbh_temporal_sequences
leaderboard_bbh_tracking_shuffled_objects_five_objects
leaderboard_bbh_tracking_shuffled_objects_seven_objects
leaderboard_bbh_tracking_shuffled_objects_three_objects leaderboard_bbh_web_of_lies piqa_ar piqa_ca piqa_eu
    """.split()
)


@dataclass
class EvaluatorConfig(FromParams):
    """Everything an evaluation needs besides its data and models; the form's "off" values of the sampler (alg_temp
    0, top_p 1, top_k 0, parallel_threshold 0, suffix_window -1) are the samplers' None."""

    metrics: tuple[str, ...] = setting(
        ("perplexity", "generation", "speed"),
        title="Measurements",
        group="measurements",
        items={"type": "string", "enum": list(METRIC_GROUPS)},
        unique_items=True,
        ui_help=(
            "What to measure, several at once. perplexity: of plain text, an ELBO bound for diffusion models, "
            "exact for causal LMs; conditional_perplexity: of each reference answer given its prompt in the "
            "model's chat template, as trained (the figure for prompt/answer data); accuracy: masked-token "
            "accuracy at the mask ratios below; generation: answers with their perplexity and entropy; "
            "task_accuracy: answers against the reference; diversity: Self-BLEU and distinct-n; speed: tokens per "
            "second, latency and memory. None: only the lm-eval tasks. Generation, task_accuracy, diversity and "
            "speed share one generation pass."
        ),
        widget="checkboxes",
    )
    tasks: tuple[str, ...] = setting(
        (),
        title="lm-eval tasks",
        group="lm-eval tasks",
        items={"type": "string"},
        ui_help=(
            "lm-evaluation-harness tasks to run as well: multiple choice scored by ELBO for diffusion models, "
            "generation with the sampler settings above. Offline, a task needs its data in the local cache. "
            "Empty: none. Pick from the lm-eval tasks the workbench lists; a terminal run accepts any task name."
        ),
        widget="AutoCompleteWidget",
        ui_options={"enumOptions": list(SUGGESTED_TASKS)},
    )
    num_fewshot: int = setting(
        0,
        title="lm-eval few-shot examples",
        group="lm-eval tasks",
        help="Few-shot examples per lm-eval task prompt.",
        minimum=0,
        maximum=64,
    )
    limit: float = setting(
        1.0,
        title="Examples per task",
        group="lm-eval tasks",
        help=(
            "As in the workbench's lm-eval evaluators: a value up to 1 is the fraction of each task's examples "
            "(0.5: half; 1: all), a whole number above 1 is a count of examples. 0 also means all."
        ),
        minimum=0,
        ui_help="Start with 0.1 for a quick look.",
    )
    compare_with: tuple[str, ...] = setting(
        (),
        title="Compare with other models",
        group="models",
        items={"type": "string"},
        ui_help=(
            "Comma-separated further models evaluated in the same job, side by side with the workbench's model "
            "(always the first): local folders, hub ids, LoRA adapter folders (loaded on their base model) or "
            "tiny presets. Empty: none."
        ),
        widget="TextWidget",
        placeholder="tiny-ar, /path/to/model",
    )
    steps: int = setting(
        128,
        title="Denoising steps",
        group="sampler",
        help="Denoising steps per answer (diffusion samplers).",
        minimum=1,
        maximum=4096,
    )
    max_new_tokens: int = setting(
        128,
        title="Answer length in tokens",
        group="sampler",
        help="Length of each generated answer in tokens.",
        minimum=1,
        maximum=8192,
    )
    block_length: int = setting(
        32,
        title="LLaDA block length",
        group="sampler",
        help=(
            "Block size for semi-autoregressive decoding; equal to the answer length: one block (pure diffusion). "
            "The answer length must be a multiple of it, and the denoising steps a multiple of the number of "
            "blocks. Block-diffusion models (BD3LM, SDAR, LLaDA 2.x) decode in the blocks they were trained with."
        ),
        minimum=1,
        maximum=8192,
        ui_help="LLaDA-8B-Instruct on GSM8K: 78.6 with semi-autoregressive blocks, 53.2 with one block (pure diffusion).",
    )
    temperature: float = setting(
        0.0, title="Temperature", group="sampler", help="Sampling temperature (0: greedy).", minimum=0, maximum=10
    )
    remasking: str = setting(
        "low_confidence",
        title="LLaDA remasking",
        group="sampler",
        help="LLaDA-style samplers: which masked positions to reveal at each step.",
        choices=LLADA_REMASKING,
    )
    cfg_scale: float = setting(
        0.0,
        title="LLaDA guidance scale",
        group="sampler",
        help="LLaDA-style samplers: classifier-free guidance scale (0: off).",
        minimum=0,
        maximum=100,
    )
    alg: str = setting(
        "entropy",
        title="Dream reveal order",
        group="sampler",
        help="Dream: confidence used to choose which tokens to reveal.",
        choices=("entropy", "maskgit_plus", "topk_margin"),
    )
    alg_temp: float = setting(
        0.0,
        title="Dream reveal temperature",
        group="sampler",
        help="Dream: temperature of the choice of revealed positions (0: the most confident).",
        minimum=0,
        maximum=10,
    )
    top_p: float = setting(
        1.0,
        title="Top-p",
        group="sampler",
        help="Nucleus sampling for Dream and causal LMs (1: off).",
        exclusive_minimum=0,
        maximum=1,
    )
    top_k: int = setting(
        0, title="Top-k", group="sampler", help="Top-k sampling for Dream and causal LMs (0: off).", minimum=0
    )
    suppress_eos_confidence: bool = setting(
        False,
        title="LLaDA: never end answers early",
        group="sampler",
        ui_help=(
            "LLaDA-style samplers: never reveal EOS early because of its confidence (helps instruct models answer "
            "at full length)."
        ),
    )
    cache: str = setting(
        AUTO_CACHE,
        title="Decoding cache",
        group="sampler",
        help=(
            "Diffusion samplers (LLaDA and Dream families only): approximate key/value cache. auto: the fastest "
            "mode measured to keep answers, with a parallel threshold of 0.99 unless one is set: elastic for LLaDA "
            "over the whole answer window (grow_canvas 0), else dual (Dream; LLaDA with a growing canvas or a "
            "suffix window); none for other families. none: exact; prefix: the prompt and finished blocks are "
            "encoded once per block (Fast-dLLM); dual: the blocks after the current one too; elastic (LLaDA): the "
            "whole canvas once, then the blocks around the current one, refreshed from the layer where attention "
            "drifts (Elastic-Cache). Dream decodes block by block (block_length) when cached."
        ),
        choices=(AUTO_CACHE, *CACHE_MODES),
    )
    refresh_similarity: float = setting(
        REFRESH_SIMILARITY,
        title="Elastic cache refresh similarity",
        group="sampler",
        help=(
            "With cache elastic (LLaDA family; Elastic-Cache): after each pass, how similar (cosine) the block's "
            "attention on its most-attended cached token must stay for the cache to be kept; below it, the layers "
            "from the first drifting one on are recomputed over the whole canvas. Higher: more refreshes, closer "
            "to no cache; 0: never refresh."
        ),
        minimum=0.0,
        maximum=1.0,
    )
    grow_canvas: int = setting(
        8,
        title="Grow the answer window by",
        group="sampler",
        help=(
            "LLaDA-style samplers: decode this many new tokens at a time, then grow the window, and stop once "
            "every answer has ended. Keeps a model fine-tuned on short answers from ending early in a long window "
            "(demo model: 100% instead of 0% task accuracy at 128 tokens, with 16 forward passes instead of 256). "
            "0: the whole window at once, as the official sampler. Must divide the answer length."
        ),
        minimum=0,
    )
    suffix_window: int = setting(
        -1,
        title="Masked positions in view after the block",
        group="sampler",
        help=(
            "LLaDA and Dream samplers (DPad's suffix pruning): the model sees only this many positions after the "
            "block being decoded; the rest of the answer window is neither computed nor attended to, so long "
            "windows cost little. Approximate; -1: the whole window (exact). A growing canvas sees none."
        ),
        minimum=-1,
    )
    parallel_threshold: float = setting(
        0.0,
        title="Parallel decoding threshold",
        group="sampler",
        help=(
            "Diffusion samplers: at each step also reveal every masked position whose chosen token has at least "
            "this probability (at least one per step), so blocks finish in fewer steps; 0: off (the exact "
            "schedule; with cache auto, 0.99). Fast-dLLM uses 0.9 with steps = max_new_tokens."
        ),
        minimum=0.0,
        maximum=1.0,
    )
    apply_chat_template: bool = setting(
        True,
        title="Use the model's chat template",
        group="sampler",
        ui_help="Wrap prompts in the model's chat template (off: the last user message is the raw prompt).",
    )
    mc_num: int = setting(
        128,
        title="Monte-Carlo samples",
        group="measurements",
        help=(
            "Monte-Carlo samples per text for a diffusion model's ELBO (perplexity bound); more samples, smaller "
            "standard error."
        ),
        minimum=1,
        maximum=4096,
        ui_help="128 is the usual setting for reported numbers; 8-32 for a quick look.",
    )
    mask_ratios: tuple[float, ...] = setting(
        (0.15, 0.5, 0.85),
        title="Mask ratios",
        group="measurements",
        items={"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        ui_help=(
            "Comma-separated shares of tokens masked when measuring accuracy, one measurement per value (each "
            "above 0 and at most 1)."
        ),
        widget="TextWidget",
        placeholder="0.15, 0.5, 0.85",
    )
    max_length: int = setting(
        1024,
        title="Longest scored text in tokens",
        group="measurements",
        help="Longest scored text in tokens (longer texts are cut).",
        minimum=2,
        maximum=131072,
    )
    answer_extraction: str = setting(
        "exact",
        title="Answer extraction",
        group="measurements",
        help=(
            "How task_accuracy reads answers, compared after normalising case, spaces and number formats: exact "
            "(the whole answer), first_number (the first number in it), regex (group 1 of the answer pattern, "
            "else the whole match). A GSM8K-style reference '... #### 42' is compared by its final answer."
        ),
        choices=ANSWER_EXTRACTIONS,
        choice_labels=("The whole answer", "Its first number", "A regex match"),
    )
    answer_regex: str = setting(
        "",
        title="Answer regex",
        group="measurements",
        help="Regular expression used when Answer extraction is regex, e.g. 'answer is (\\S+)'.",
    )
    batch_size: int = setting(
        8,
        title="Batch size",
        group="compute",
        help=(
            "Sequences per forward pass: prompts when generating, texts for causal scoring and masked accuracy, "
            "(text, Monte-Carlo sample) pairs for the ELBO (raise it on a large GPU: 128 Monte-Carlo samples at "
            "batch size 8 take 16 passes per text)."
        ),
        minimum=1,
        maximum=1024,
    )
    dtype: str = setting(
        "auto",
        title="Precision",
        group="models",
        help="Weights precision: auto (the checkpoint's), float32, bfloat16 or float16.",
        choices=DTYPES,
    )
    seed: int = setting(
        42,
        title="Random seed",
        group="models",
        help="Random seed for masks, Monte-Carlo samples and sampling.",
        minimum=0,
    )
    trust_remote_code: bool = setting(
        False,
        title="Allow the checkpoint's own code to run",
        group="models",
        ui_help=(
            "Allow a checkpoint's own Python code to run when its architecture is not implemented natively. Off "
            "by default."
        ),
    )

    def __post_init__(self) -> None:
        # a job's parameters give lists; the settings keep tuples
        for f in dataclasses.fields(self):
            if isinstance(getattr(self, f.name), list):
                setattr(self, f.name, tuple(getattr(self, f.name)))
        if "task_accuracy" in self.metrics:  # checked now, before any model loads
            compile_answer_regex(self.answer_extraction, self.answer_regex)

    def sampler_settings(self) -> SamplerSettings:
        return SamplerSettings.from_form(
            steps=self.steps,
            max_new_tokens=self.max_new_tokens,
            block_length=self.block_length,
            temperature=self.temperature,
            remasking=self.remasking,
            cfg_scale=self.cfg_scale,
            alg=self.alg,
            alg_temp=self.alg_temp,
            top_p=self.top_p,
            top_k=self.top_k,
            suppress_eos_confidence=self.suppress_eos_confidence,
            cache=self.cache,
            parallel_threshold=self.parallel_threshold,
            grow_canvas=self.grow_canvas,
            suffix_window=self.suffix_window,
            refresh_similarity=self.refresh_similarity,
        )

    def eval_settings(self) -> EvalSettings:
        return EvalSettings(
            metrics=tuple(dict.fromkeys(self.metrics)),
            mc_num=self.mc_num,
            mask_ratios=self.mask_ratios,
            batch_size=self.batch_size,
            seed=self.seed,
            max_length=self.max_length,
            apply_chat_template=self.apply_chat_template,
            answer_extraction=self.answer_extraction,
            answer_regex=self.answer_regex,
            sampler=self.sampler_settings(),
        )
