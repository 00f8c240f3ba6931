"""lm-evaluation-harness on diffusion LMs: the `dlm_diffusion` lm-eval model (`model`), task loading (`tasks`),
`run_lm_eval` (`run`) and lm-eval's command line with the model registered (`cli`).

Likelihood requests are scored with the count-form ELBO (`dlm.elbo`), a Monte-Carlo lower bound of
log p(continuation | context): multiple-choice accuracies compare bounds, and the perplexities of rolling-likelihood
tasks (wikitext) are upper bounds. `is_greedy` is a one-step check: every continuation token is the argmax when all of
them are masked at once (not LLaDA's token-by-token greedy decoding, which costs one forward pass per token).
Generation requests go through the family's sampler (`dlm.generation`) with the caller's sampler settings, cut at the
task's stop strings. Causal LMs (family `ar`) are evaluated by lm-eval's own `HFLM` (exact log-likelihoods).

From lm-eval's own command line: `python -m dlm.lm_eval_cli` (or `dlm-lm-eval`) takes every `lm_eval` option,
registers `dlm_diffusion` and runs lm-eval (`main`); lm-eval 0.4.13 loads no plugins, so `lm_eval --model
dlm_diffusion` alone cannot find it. The model runs on the CPU when no GPU is present, whatever `--device` says.
Task YAMLs given as files or folders (`--tasks`, `--include_path`) whose `!function` entries import Python run only
with `--trust_remote_code`.

Each ELBO draws its masks from a generator seeded by (seed, the request's token ids), so a request gets the same value
whatever its batch or its position in the run, and equals `dlm.elbo.elbo` on that request alone with
`example_generators([request_key(context_ids, continuation_ids)], seed)`.
"""
