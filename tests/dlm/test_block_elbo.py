"""The block-diffusion ELBO: per block, the count-form bound of the block given the clean blocks before it, summed.

The reference is computed independently, block by block: a forward over [clean blocks < b, noisy block b] alone under
a block-causal mask written out position by position, then (L_b / l_b) * sum of log p over the block's masked tokens.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dlm.elbo import draw_elbo_masks, elbo, elbo_terms
from tests.dlm.test_bd3lm import MASK_ID, block_causal, tiny_qwen3


def brute_terms(model, ids, response, masks, block_size):
    """float64 [n, B], one small forward per (sample, row, block)."""
    n, batch, length = masks.shape
    terms = torch.zeros(n, batch, dtype=torch.float64)
    for j, row in itertools.product(range(n), range(batch)):
        for start in range(0, length, block_size):
            end = min(start + block_size, length)
            scored = response[row, start:end]
            masked = masks[j, row, start:end]
            if not scored.any():
                continue
            context = torch.cat([ids[row, :start], ids[row, start:end].masked_fill(masked, MASK_ID)])
            logits = model(input_ids=context[None], attention_mask=block_causal(end, block_size, "sdpa")).logits[0]
            log_probs = torch.log_softmax(logits[start:end].double(), dim=-1)
            picked = log_probs[masked, ids[row, start:end][masked]]
            terms[j, row] += picked.sum() * scored.sum() / masked.sum()
    return terms


@pytest.mark.parametrize("block_size", [2, 3, 4])
def test_block_elbo_terms_equal_a_forward_per_block(block_size):
    model = tiny_qwen3()
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, MASK_ID, (2, 9), generator=generator)
    response = torch.zeros(2, 9, dtype=torch.bool)
    response[0, 3:9] = True
    response[1, 5:8] = True  # a prompt of 5, two tokens of answer padding after
    masks = draw_elbo_masks(response, 5, generator, block_size=block_size)
    with torch.no_grad():
        ours = elbo_terms(
            model, ids, response, masks, mask_id=MASK_ID, shift=False, block_size=block_size, batch_size=3
        )
        expected = brute_terms(model, ids, response, masks, block_size)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


def test_block_masks_mask_each_scored_block_with_counts_spread_over_it():
    response = torch.zeros(1, 12, dtype=torch.bool)
    response[0, 2:12] = True  # blocks of 4: [2, 3], [4..7], [8..11]
    masks = draw_elbo_masks(response, 8, torch.Generator().manual_seed(0), block_size=4)
    assert not (masks & ~response).any()
    per_block = masks[:, 0].view(8, 3, 4).sum(-1)
    assert (per_block >= 1).all()
    assert set(per_block[:, 0].tolist()) == {1, 2}  # spread over 1..2
    assert sorted(set(per_block[:, 1].tolist())) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="masks no token of block 1, which holds response tokens"):
        broken = masks.clone()
        broken[0, 0, 4:8] = False
        elbo_terms(tiny_qwen3(), torch.zeros(1, 12, dtype=torch.long), response, broken, mask_id=MASK_ID,
                   shift=False, block_size=4)  # fmt: skip


def test_block_elbo_is_unbiased_for_the_sum_of_the_blocks_exact_bounds():
    """Averaged over every combination of per-block masks (weighted as the count form draws them), the estimate is the
    sum over blocks of each block's exact bound: checked on 2 blocks of 3 answer tokens."""
    model = tiny_qwen3()
    ids = torch.randint(0, MASK_ID, (1, 6), generator=torch.Generator().manual_seed(5))
    response = torch.ones(1, 6, dtype=torch.bool)
    subsets = [s for size in (1, 2, 3) for s in itertools.combinations(range(3), size)]
    weight = {s: 1 / (3 * math.comb(3, len(s))) for s in subsets}
    masks = torch.zeros(len(subsets) ** 2, 1, 6, dtype=torch.bool)
    weights = []
    for i, (first, second) in enumerate(itertools.product(subsets, subsets)):
        masks[i, 0, list(first)] = True
        masks[i, 0, [3 + k for k in second]] = True
        weights.append(weight[first] * weight[second])
    with torch.no_grad():
        terms = elbo_terms(model, ids, response, masks, mask_id=MASK_ID, shift=False, block_size=3)[:, 0]
        expected = 0.0
        for block in (0, 1):  # each block's exact bound alone, from the brute force
            only = torch.zeros(len(subsets), 1, 6, dtype=torch.bool)
            other = 1 - block
            for i, s in enumerate(subsets):
                only[i, 0, [3 * block + k for k in s]] = True
                only[i, 0, 3 * other] = True  # the other block needs a mask too; its term is left out below
            block_response = torch.zeros(1, 6, dtype=torch.bool)
            block_response[0, 3 * block : 3 * block + 3] = True
            per_block = brute_terms(model, ids, block_response, only, 3)[:, 0]
            expected += sum(weight[s] * per_block[i] for i, s in enumerate(subsets))
    assert float((terms * torch.tensor(weights, dtype=torch.float64)).sum()) == pytest.approx(float(expected), rel=1e-6)


def test_elbo_draws_block_masks_when_given_a_block_size():
    model = tiny_qwen3()
    ids = torch.randint(0, MASK_ID, (1, 8), generator=torch.Generator().manual_seed(1))
    response = torch.ones(1, 8, dtype=torch.bool)
    with torch.no_grad():
        mean, _ = elbo(model, ids, response, mask_id=MASK_ID, shift=False, n=4, block_size=4,
                       generator=torch.Generator().manual_seed(2))  # fmt: skip
        masks = draw_elbo_masks(response, 4, torch.Generator().manual_seed(2), block_size=4)
        terms = brute_terms(model, ids, response, masks, 4)
    assert float(mean[0]) == pytest.approx(float(terms.mean()), rel=1e-6)


def test_dpo_on_a_block_diffusion_model_scores_responses_with_the_block_elbo(preset_workspace, tmp_path, monkeypatch):
    """From the DPO form to the logged rewards: masks drawn per block (tiny-bd3lm's blocks of 4, from its config) and
    rewards beta times block-ELBO differences computed here block by block."""
    import dlm.trainers.dpo_trainer as dpo_trainer
    from dlm.loading import load_model_and_tokenizer
    from tests.dlm.test_trainer_settings import PAIRS, plugin_config
    from tests.helpers import Reporter

    draws = []
    draw = dpo_trainer.draw_pair_masks

    def recording(batch, n, seed, name, block_size=None):
        masks = draw(batch, n, seed, name, block_size)
        draws.append((name, block_size, batch["input_ids"].clone(), batch["response_mask"].clone(), masks))
        return masks

    monkeypatch.setattr(dpo_trainer, "draw_pair_masks", recording)
    beta = 0.5
    config = plugin_config(
        str(preset_workspace), tmp_path, model_name="tiny-bd3lm", mc_samples="2", beta=str(beta), antithetic="false"
    )
    reporter = Reporter()
    dpo_trainer.run_dpo(config, PAIRS, None, reporter)
    (_, policy_size, ids, response, policy), (_, reference_size, _, _, reference) = [
        d for d in draws if d[0] in ("train0", "train0:reference")
    ]
    assert policy_size == reference_size == 4
    loaded = load_model_and_tokenizer("tiny-bd3lm", workspace=str(preset_workspace), dtype="float32")
    model = loaded.model.eval()
    monkeypatch.setitem(globals(), "MASK_ID", loaded.special_ids.mask)
    margins = []
    with torch.no_grad():
        for r in range(ids.shape[0]):  # each row alone, without its right padding (hidden from the model in training)
            end = int(response[r].nonzero().max()) + 1
            row = (ids[r : r + 1, :end], response[r : r + 1, :end])
            policy_elbo, reference_elbo = (
                brute_terms(model, *row, m[:, r : r + 1, :end], 4).mean() for m in (policy, reference)
            )
            margins.append(float(policy_elbo - reference_elbo))
    margins = torch.tensor(margins)
    half = ids.shape[0] // 2
    assert reporter.first("train/rewards/chosen") == pytest.approx(beta * float(margins[:half].mean()), rel=1e-4)
    assert reporter.first("train/rewards/rejected") == pytest.approx(beta * float(margins[half:].mean()), rel=1e-4)


def test_the_evaluators_text_elbo_of_a_block_model_is_the_block_elbo(preset_workspace, monkeypatch):
    """`text_elbos` (the evaluator's perplexity bound) on tiny-bd3lm: per text, the block ELBO of its masks (drawn as
    documented, from its index and seed) computed here block by block."""
    from dlm.elbo import example_generators
    from dlm.loading import load_model_and_tokenizer
    from dlm.metrics.likelihood import scoring_inputs, text_elbos

    loaded = load_model_and_tokenizer("tiny-bd3lm", workspace=str(preset_workspace), dtype="float32")
    monkeypatch.setitem(globals(), "MASK_ID", loaded.special_ids.mask)
    inputs = scoring_inputs(loaded.tokenizer, loaded.special_ids.bos, ["one plus two is three", "seven"], 32)
    means, _ = text_elbos(loaded, inputs, mc_num=3, batch_size=1, seed=7)
    for k, ids in enumerate(inputs.ids):
        ids = torch.tensor(ids)[None]
        scored = torch.ones_like(ids, dtype=torch.bool)
        scored[0, : inputs.context_length(k)] = False  # the first id is context only
        generator = example_generators([f"perplexity:{inputs.indices[k]}"], 7)
        masks = draw_elbo_masks(scored, 3, generator, block_size=4)
        with torch.no_grad():
            expected = brute_terms(loaded.model.eval(), ids, scored, masks, 4).mean()
        assert float(means[k]) == pytest.approx(float(expected), rel=1e-5)
