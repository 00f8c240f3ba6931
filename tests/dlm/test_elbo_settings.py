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

from dlm.elbo import draw_elbo_masks, elbo, elbo_terms, exact_elbo, example_generators
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


def test_the_standard_error_is_per_row(llada) -> None:
    ids, response, attention = _batch([(0, 2, 4), (1, 3, 6)], seed=2)
    masks = draw_elbo_masks(response, 6, torch.Generator().manual_seed(1))
    kwargs = {"attention_mask": attention, **_kwargs(llada, False)}
    with torch.no_grad():
        terms = elbo_terms(llada, ids, response, masks, **kwargs)
        mean, stderr = elbo(llada, ids, response, masks=masks, **kwargs)
    for row in range(2):
        values = terms[:, row].tolist()
        average = sum(values) / 6
        deviation = math.sqrt(sum((v - average) ** 2 for v in values) / 5)  # the sample standard deviation
        assert mean[row].item() == pytest.approx(average, rel=1e-12)
        assert stderr[row].item() == pytest.approx(deviation / math.sqrt(6), rel=1e-9)


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
