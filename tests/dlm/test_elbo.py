"""Count-form ELBO: mask-count spread, mask drawing, estimator against brute-force enumeration, antithetic sharing,
per-example seeds and batching, on the tiny LLaDA (unshifted) and Dream (shifted) fixture checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM

import dlm  # noqa: F401  (registers LLaDA and Dream with the Auto classes)
from dlm.elbo import draw_elbo_masks, elbo, elbo_terms, exact_elbo, example_generators, spread_mask_counts

FIXTURES = Path(__file__).parents[1] / "fixtures" / "golden"
FAMILIES = {"llada-tiny": False, "dream-tiny": True}  # fixture -> shift


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, bool]:
    """(model in eval mode, shift) of a tiny fixture checkpoint."""
    model = AutoModelForMaskedLM.from_pretrained(FIXTURES / request.param).eval()
    return model, FAMILIES[request.param]


def _batch(lengths: list[tuple[int, int, int]], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, response_mask, attention_mask for rows of (left padding, prompt, response), right-padded."""
    width = max(sum(row) for row in lengths) + 2
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (len(lengths), width), generator=generator)
    response = torch.zeros(len(lengths), width, dtype=torch.bool)
    attention = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, (pad, prompt, answer) in enumerate(lengths):
        response[row, pad + prompt : pad + prompt + answer] = True
        attention[row, pad : pad + prompt + answer] = 1
        ids[row, attention[row] == 0] = 0
    return ids, response, attention


def _kwargs(model: torch.nn.Module, shift: bool) -> dict:
    return {"mask_id": model.config.mask_token_id, "shift": shift}


@pytest.mark.parametrize(("length", "n"), [(1, 4), (5, 5), (7, 3), (10, 8), (10, 25), (128, 16), (6, 128)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spread_mask_counts_follow_the_formula(length: int, n: int, seed: int) -> None:
    counts = spread_mask_counts(length, n, torch.Generator().manual_seed(seed))
    k = int(torch.randint(1, length + 1, (1,), generator=torch.Generator().manual_seed(seed)))
    expected = [((round(k + j * length / n) - 1) % length) + 1 for j in range(n)]
    assert counts.tolist() == expected
    assert counts.dtype == torch.int64 and int(counts.min()) >= 1 and int(counts.max()) <= length
    if n % length == 0:  # evenly spread: every count equally often
        assert torch.bincount(counts, minlength=length + 1)[1:].tolist() == [n // length] * length


def test_masks_hit_exactly_l_response_tokens_and_nothing_else() -> None:
    _, response, _ = _batch([(0, 4, 9), (3, 2, 5), (1, 6, 1)])
    ids = [101, 102, 103]
    masks = draw_elbo_masks(response, 40, example_generators(ids, seed=5))
    assert masks.shape == (40, *response.shape) and masks.dtype == torch.bool
    assert not bool((masks & ~response).any()), "a prompt or padding position was masked"
    for row, gen in enumerate(example_generators(ids, seed=5)):
        expected = spread_mask_counts(int(response[row].sum()), 40, gen)
        assert masks[:, row].sum(-1).tolist() == expected.tolist()


def test_masked_positions_are_uniform() -> None:
    response = torch.zeros(1, 9, dtype=torch.bool)
    response[0, 3:8] = True
    masks = draw_elbo_masks(response, 20000, torch.Generator().manual_seed(0))
    frequency = masks[:, 0, 3:8].double().mean(0)
    # counts are spread evenly over 1..5, so each token is masked with probability mean(l)/L = 3/5
    torch.testing.assert_close(frequency, torch.full_like(frequency, 0.6), atol=0.015, rtol=0)
    # every 2-subset equally likely among the l = 2 samples
    pairs = masks[masks[:, 0].sum(-1) == 2][:, 0, 3:8]
    _, counts = (pairs.long() * (2 ** torch.arange(5))).sum(-1).unique(return_counts=True)
    assert len(counts) == 10
    assert (counts.double() / counts.sum()).sub(0.1).abs().max() < 0.03


def test_estimator_matches_exact_elbo(tiny: tuple[torch.nn.Module, bool]) -> None:
    model, shift = tiny
    ids, response, attention = _batch([(0, 3, 6), (2, 4, 8), (0, 1, 3)], seed=3)
    with torch.no_grad():
        exact = exact_elbo(model, ids, response, attention_mask=attention, **_kwargs(model, shift))
        mean, stderr = elbo(
            model,
            ids,
            response,
            n=512,
            attention_mask=attention,
            batch_size=512,
            generator=torch.Generator().manual_seed(11),
            **_kwargs(model, shift),
        )
    assert (stderr < 0.05 * exact.abs()).all(), "too few samples for the comparison to mean anything"
    assert ((mean - exact).abs() <= 3 * stderr).all(), f"estimate {mean} vs exact {exact} (stderr {stderr})"


def test_exact_elbo_is_the_mean_over_all_masks(tiny: tuple[torch.nn.Module, bool]) -> None:
    model, shift = tiny
    ids, response, _ = _batch([(0, 2, 1), (0, 2, 2)], seed=4)
    with torch.no_grad():
        exact = exact_elbo(model, ids, response, **_kwargs(model, shift))
        # L = 1: the single mask; L = 2: l = 1 (two masks, weight 2 each) or l = 2 (one mask, weight 1)
        one = elbo_terms(model, ids[:1], response[:1], response[:1].unsqueeze(0), **_kwargs(model, shift))
        positions = response[1].nonzero().squeeze(-1).tolist()
        masks = torch.zeros(3, 1, ids.shape[1], dtype=torch.bool)
        masks[0, 0, positions[0]] = masks[1, 0, positions[1]] = True
        masks[2, 0, positions] = True
        two = elbo_terms(model, ids[1:], response[1:], masks, **_kwargs(model, shift))
    torch.testing.assert_close(exact[0], one[0, 0], rtol=1e-12, atol=0)
    torch.testing.assert_close(exact[1], 0.5 * (two[:2, 0].mean() + two[2, 0]), rtol=1e-12, atol=0)


def test_shared_masks_make_policy_and_reference_terms_identical(tiny: tuple[torch.nn.Module, bool]) -> None:
    model, shift = tiny
    ids, response, attention = _batch([(0, 4, 10), (2, 3, 7)], seed=5)
    reference = copy.deepcopy(model)
    masks = draw_elbo_masks(response, 16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        policy_terms = elbo_terms(model, ids, response, masks, attention_mask=attention, **_kwargs(model, shift))
        reference_terms = elbo_terms(reference, ids, response, masks, attention_mask=attention, **_kwargs(model, shift))
        other = draw_elbo_masks(response, 16, torch.Generator().manual_seed(1))
        independent = elbo_terms(reference, ids, response, other, attention_mask=attention, **_kwargs(model, shift))
    assert torch.equal(policy_terms, reference_terms)
    assert not torch.equal(policy_terms, independent)


def test_shared_masks_reduce_the_variance_of_the_difference(tiny: tuple[torch.nn.Module, bool]) -> None:
    model, shift = tiny
    ids, response, _ = _batch([(0, 4, 12)], seed=6)
    policy = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.01 * parameter.std() * torch.randn_like(parameter))
        masks = draw_elbo_masks(response, 256, torch.Generator().manual_seed(0))
        other = draw_elbo_masks(response, 256, torch.Generator().manual_seed(1))
        policy_terms = elbo_terms(policy, ids, response, masks, batch_size=128, **_kwargs(model, shift))
        shared = elbo_terms(model, ids, response, masks, batch_size=128, **_kwargs(model, shift))
        independent = elbo_terms(model, ids, response, other, batch_size=128, **_kwargs(model, shift))
    assert (policy_terms - shared).var() < 0.1 * (policy_terms - independent).var()


def test_per_example_seeds_reproduce_masks_across_batches(tiny: tuple[torch.nn.Module, bool]) -> None:
    model, shift = tiny
    ids, response, attention = _batch([(0, 3, 6), (1, 2, 5), (0, 5, 4)], seed=7)
    first = draw_elbo_masks(response, 12, example_generators(["a", "b", "c"], seed=9))
    # the same examples later, in another order, with other padding and width
    later_ids, later_response, later_attention = _batch([(4, 5, 4), (0, 3, 6)], seed=8)
    later_ids[0, later_attention[0].bool()] = ids[2, attention[2].bool()]
    later_ids[1, later_attention[1].bool()] = ids[0, attention[0].bool()]
    later = draw_elbo_masks(later_response, 12, example_generators(["c", "a"], seed=9))
    for old_row, new_row in ((2, 0), (0, 1)):
        assert torch.equal(first[:, old_row][:, response[old_row]], later[:, new_row][:, later_response[new_row]])
    with torch.no_grad():
        kwargs = _kwargs(model, shift)
        before = elbo_terms(model, ids, response, first, attention_mask=attention, **kwargs)
        after = elbo_terms(model, later_ids, later_response, later, attention_mask=later_attention, **kwargs)
    torch.testing.assert_close(after[:, 0], before[:, 2], rtol=1e-5, atol=0)
    torch.testing.assert_close(after[:, 1], before[:, 0], rtol=1e-5, atol=0)
    other_seed = draw_elbo_masks(response, 12, example_generators(["a", "b", "c"], seed=10))
    assert not torch.equal(first, other_seed)


def test_batched_terms_equal_one_sample_per_forward(tiny: tuple[torch.nn.Module, bool]) -> None:
    model, shift = tiny
    model64 = copy.deepcopy(model).double()
    ids, response, attention = _batch([(0, 4, 9), (2, 3, 6), (0, 6, 3)], seed=9)
    masks = draw_elbo_masks(response, 10, torch.Generator().manual_seed(2))
    with torch.no_grad():
        kwargs = {"attention_mask": attention, **_kwargs(model, shift)}
        batched = elbo_terms(model64, ids, response, masks, batch_size=16, **kwargs)
        single = elbo_terms(model64, ids, response, masks, batch_size=1, **kwargs)
        batched32 = elbo_terms(model, ids, response, masks, batch_size=16, **kwargs)
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-10)
    torch.testing.assert_close(batched32, batched, rtol=1e-5, atol=0)  # float32 forward, same terms


def test_terms_follow_the_definition(tiny: tuple[torch.nn.Module, bool]) -> None:
    model, shift = tiny
    ids, response, _ = _batch([(0, 3, 5)], seed=10)
    masks = draw_elbo_masks(response, 4, torch.Generator().manual_seed(3))
    with torch.no_grad():
        terms = elbo_terms(model, ids, response, masks, **_kwargs(model, shift))
        for j in range(4):
            noisy = ids.masked_fill(masks[j], model.config.mask_token_id)
            logits = model(noisy).logits.float()
            if shift:
                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            log_probs = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            expected = log_probs[masks[j]].double().sum() * 5 / masks[j].sum()
            torch.testing.assert_close(terms[j, 0], expected, rtol=1e-6, atol=0)


def test_terms_carry_gradients(tiny: tuple[torch.nn.Module, bool]) -> None:
    model, shift = tiny
    ids, response, _ = _batch([(0, 3, 5)], seed=11)
    masks = draw_elbo_masks(response, 2, torch.Generator().manual_seed(0))
    terms = elbo_terms(model, ids, response, masks, **_kwargs(model, shift))
    terms.sum().backward()
    head = model.get_output_embeddings().weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_bad_inputs_are_named(tiny: tuple[torch.nn.Module, bool]) -> None:
    model, shift = tiny
    ids, response, _ = _batch([(0, 3, 5), (0, 4, 9)])
    masks = draw_elbo_masks(response, 2)
    outside = masks.clone()
    outside[0, 0, 0] = True
    with pytest.raises(ValueError, match="not a response token"):
        elbo_terms(model, ids, response, outside, **_kwargs(model, shift))
    empty = masks.clone()
    empty[1, 1] = False
    with pytest.raises(ValueError, match="masks no token"):
        elbo_terms(model, ids, response, empty, **_kwargs(model, shift))
    with pytest.raises(ValueError, match="row 1 needs 1 to 8 response tokens, it has 9"):
        exact_elbo(model, ids, response, **_kwargs(model, shift))
    with pytest.raises(ValueError, match="row 0 has no response token"):
        draw_elbo_masks(torch.zeros(1, 4, dtype=torch.bool), 2)
