"""Evaluate a diffusion or causal LM on a dataset: likelihood metrics of texts and metrics of generated answers.

Metric groups (`EvalSettings.metrics`):
- `perplexity`: the ELBO upper bound of a diffusion LM (Monte-Carlo, with its standard error), the exact perplexity
  of a causal LM; both over the same tokens of plain texts (`dlm.metrics.likelihood`).
- `conditional_perplexity`: the same two kinds for prompt/answer data, of the reference answer given its prompt as
  the trainer encodes them (the family's chat template, the prompt never masked): the figure that falls with SFT,
  where plain-text perplexity of `prompt\nanswer` (a format no trained model saw) can rise.
- `accuracy`: masked-token accuracy at each mask ratio (diffusion), next-token accuracy (causal).
- `generation`: the answers to the prompts, their generation perplexity (under `scorer`, by default the model
  itself) always paired with their unigram entropy.
- `task_accuracy`: answers against the reference (`answer_extraction`: exact, first_number or regex).
- `diversity`: Self-BLEU and distinct-1/2 of the answers.
- `speed`: generated non-EOS tokens per second, forward passes (NFE) per sample, latency per prompt, peak memory.
The last four share one generation pass, which also reports `empty_answers` (answers that end at once) (batches of `batch_size` prompts, the family's sampler); every metric of a
generated answer carries the sampler settings in its details.

Modules: `settings` (examples, settings, metric groups), `checks` (settings and data checked before any model
work), `likelihood` (text and conditional perplexity, token accuracy), `answers` (the generation pass and the
metrics of its answers), `run` (`evaluate`).
"""
