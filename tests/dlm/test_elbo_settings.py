"""ELBO settings that the estimator tests did not pin (found by a mutation run of `dlm/elbo.py`): `batch_size` bounds
every forward pass, the standard error is per row and NaN for one sample, per-example seeds follow their documented
hash, and bad shapes are named."""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator

import pytest
import torch

from dlm.elbo import draw_elbo_masks, elbo, elbo_terms, exact_elbo, example_generators, spread_mask_counts
from tests.dlm.test_elbo import _batch, _kwargs


@pytest.fixture(scope="module")
def llada():
    from transformers import AutoModelForMaskedLM

    import dlm  # noqa: F401  (registers LLaDA with the Auto classes)
    from tests.dlm.test_elbo import FIXTURES

    return AutoModelForMaskedLM.from_pretrained(FIXTURES / "llada-tiny").eval()


@contextlib.contextmanager
def forward_batches(model: torch.nn.Module) -> Iterator[list[int]]:
    """The batch size of every forward pass of `model` while inside."""
    batches: list[int] = []

    def record(module, args, kwargs):
        batches.append((args[0] if args else kwargs["input_ids"]).shape[0])

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield batches
    finally:
        hook.remove()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batch_size_bounds_every_forward_pass(llada, batch_size: int) -> None:
    ids, response, attention = _batch([(0, 2, 3), (1, 2, 2)], seed=1)
    kwargs = {"attention_mask": attention, "batch_size": batch_size, **_kwargs(llada, False)}
    with torch.no_grad(), forward_batches(llada) as sampled:
        elbo(llada, ids, response, n=4, generator=torch.Generator().manual_seed(0), **kwargs)
    with torch.no_grad(), forward_batches(llada) as enumerated:
        exact_elbo(llada, ids, response, **kwargs)
    assert max(sampled) == batch_size and sum(sampled) == 4 * 2  # every (sample, row) pair once
    assert max(enumerated) == batch_size and sum(enumerated) == (2**3 - 1) + (2**2 - 1)  # every mask of each row


@pytest.mark.parametrize("n", [2, 6])
def test_the_standard_error_is_per_row(llada, n: int) -> None:
    ids, response, attention = _batch([(0, 2, 4), (1, 3, 6)], seed=2)
    masks = draw_elbo_masks(response, n, torch.Generator().manual_seed(1))
    kwargs = {"attention_mask": attention, **_kwargs(llada, False)}
    with torch.no_grad():
        terms = elbo_terms(llada, ids, response, masks, **kwargs)
        mean, stderr = elbo(llada, ids, response, masks=masks, **kwargs)
    for row in range(2):
        values = terms[:, row].tolist()
        average = sum(values) / n
        deviation = math.sqrt(sum((v - average) ** 2 for v in values) / (n - 1))  # the sample standard deviation
        assert mean[row].item() == pytest.approx(average, rel=1e-12)
        assert stderr[row].item() == pytest.approx(deviation / math.sqrt(n), rel=1e-9)


def test_one_sample_has_no_standard_error(llada) -> None:
    ids, response, _ = _batch([(0, 2, 3), (0, 1, 2)], seed=3)
    masks = draw_elbo_masks(response, 1, torch.Generator().manual_seed(2))
    with torch.no_grad():
        term = elbo_terms(llada, ids, response, masks, **_kwargs(llada, False))
        mean, stderr = elbo(llada, ids, response, masks=masks, **_kwargs(llada, False))
    assert torch.equal(mean, term[0])
    assert stderr.shape == (2,) and bool(stderr.isnan().all())


def test_example_generators_are_seeded_by_the_documented_hash() -> None:
    """blake2b of "seed:id" (8 bytes, little-endian, halved): the same in every process and version, so a reference
    ELBO precomputed once is reproduced with identical masks; the default seed is 0."""

    def documented(seed: int, example_id: str) -> int:
        digest = hashlib.blake2b(f"{seed}:{example_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1

    assert [g.initial_seed() for g in example_generators(["a", 7])] == [documented(0, "a"), documented(0, "7")]
    assert example_generators(["a"], seed=3)[0].initial_seed() == documented(3, "a")


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match=r"response_mask must be 2-D \[batch, length\], got shape \(4,\)"):
        draw_elbo_masks(torch.ones(4, dtype=torch.bool), 2)
    response = torch.ones(3, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="got 2 generators for 3 rows: pass one per row, or a single one"):
        draw_elbo_masks(response, 2, example_generators(["a", "b"]))


@pytest.mark.parametrize("n", [1, 2])
def test_masked_positions_are_uniform_with_few_samples_per_draw(n: int) -> None:
    """DPO draws a few masks per pair (mc_samples 2 to 8): each draw of them must still mask uniform positions, so
    every one of the L = 5 tokens is masked with the same probability, mean(l) / L, over many draws."""
    response = torch.ones(1, 5, dtype=torch.bool)
    draws = torch.cat([draw_elbo_masks(response, n, torch.Generator().manual_seed(s)) for s in range(3000)])
    frequency = draws[:, 0].double().mean(0)
    uniform = draws[:, 0].double().sum(-1).mean() / 5
    torch.testing.assert_close(frequency, uniform.expand(5), atol=0.035, rtol=0)


def test_a_block_of_one_response_token_must_be_masked(llada) -> None:
    """Block diffusion scores every block that holds response tokens, a block of a single one too."""
    ids = torch.randint(5, 60, (1, 8), generator=torch.Generator().manual_seed(0))
    response = torch.zeros(1, 8, dtype=torch.bool)
    response[0, 3:5] = True  # block 0 (positions 0-3) holds one response token, block 1 the other
    masks = torch.zeros(1, 1, 8, dtype=torch.bool)
    masks[0, 0, 4] = True  # block 1's token only
    with pytest.raises(ValueError, match="masks no token of block 0, which holds response tokens"):
        elbo_terms(llada, ids, response, masks, block_size=4, **_kwargs(llada, False))


def test_bad_settings_of_the_terms_are_named(llada) -> None:
    ids, response, _ = _batch([(0, 2, 3), (0, 2, 2)], seed=4)
    masks = draw_elbo_masks(response, 2, torch.Generator().manual_seed(0))
    kwargs = _kwargs(llada, False)
    width = ids.shape[1]
    with pytest.raises(ValueError, match=rf"same shape, got \(2, {width}\) and \(1, {width}\)"):
        elbo_terms(llada, ids, response[:1], masks, **kwargs)
    with pytest.raises(ValueError, match=rf"masks must be \[n, batch, length\] = \[n, 2, {width}\], got \(2, 1, "):
        elbo_terms(llada, ids, response, masks[:, :1], **kwargs)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        elbo_terms(llada, ids, response, masks, batch_size=0, **kwargs)
    block_masks = draw_elbo_masks(response, 2, torch.Generator().manual_seed(0), block_size=4)
    with pytest.raises(ValueError, match="block diffusion predicts each token at its own position: shift must be"):
        elbo_terms(llada, ids, response, block_masks, mask_id=kwargs["mask_id"], shift=True, block_size=4)
    for length, n in ((0, 3), (3, 0)):
        with pytest.raises(ValueError, match=f"needs length >= 1 and n >= 1, got length={length}, n={n}"):
            spread_mask_counts(length, n)
