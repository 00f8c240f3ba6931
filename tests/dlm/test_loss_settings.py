"""The loss settings reach the masking and weighting they name (cases the mutation run of `dlm/losses.py` found
untested): the noise schedule of the drawn masks, the geometric parameter of CART weights, and the refusal of a
mask shaped unlike the batch."""

import pytest
import torch

from dlm.losses import LossConfig, diffusion_loss, draw_mask, token_weights
from dlm.masking import cart_weights
from dlm.schedules import get_schedule


def test_drawn_masks_follow_the_configured_noise_schedule():
    ids = torch.full((4, 20000), 7)
    config = LossConfig(mask_token_id=0, noise_schedule="cosine", time_epsilon=0.2)
    t, masked = draw_mask({"input_ids": ids}, config, torch.Generator().manual_seed(1))
    expected = get_schedule("cosine").mask_probability(t)
    assert (expected - t).abs().max() > 0.05  # the linear schedule's masks would be told apart
    assert masked.float().mean(dim=1) == pytest.approx(expected.tolist(), abs=0.02)


def test_cart_weights_take_the_configured_geometric_parameter():
    masked = torch.zeros(2, 12, dtype=torch.bool)
    masked[:, 3:9] = True
    weights = token_weights(LossConfig(mask_token_id=0, loss_weight_type="cart[geo_p:0.8]"), torch.rand(2), masked)
    assert torch.equal(weights, cart_weights(masked, 0.8))
    assert not torch.equal(weights, cart_weights(masked))


def test_a_mask_shaped_unlike_the_batch_is_refused():
    ids = torch.full((2, 6), 7)
    with pytest.raises(ValueError, match=r"masked must be a bool tensor shaped like input_ids \(2, 6\)"):
        diffusion_loss(
            None, {"input_ids": ids}, masked=torch.ones(2, 5, dtype=torch.bool), t=torch.rand(2), config=LossConfig(0)
        )
