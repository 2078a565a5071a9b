"""The incremental PixelCNN++ (models/pixelcnnpp_stepper.py) against the full forward pass, at every position.

Random-weight pixelcnnpp-tiny models (after data-dependent init, so activations have the trained
model's scale) on images whose sides are divisible by 4, as the model needs: every resolution, both
streams, both up-samplings and the skip connections are exercised.

Tolerances. In float64 the stepper must agree to 1e-10 (it does to about 1e-14): that checks the
cache logic itself, since a wrong row, column or tap gives differences of the order of the outputs
(about 1 to 10). In float32, the dtype the models run in, it agrees to 1e-5 (it does to about 5e-6
on outputs up to about 9), not bit for bit: the full pass's convolutions over whole images and the
stepper's matrix products over one position or one row add the same terms in different orders,
and float addition is not associative (shared/docs/coding-notes.md: "incremental step vs full
forward: no, at every position"). That is why bench codes PixelCNN++ with the stepper on both sides
(bench/inprocess.py), never the full pass on one.
"""

from __future__ import annotations

import pytest
import torch

from snailcompress import mixture
from snailcompress.errors import UsageError
from snailcompress.models import presets
from snailcompress.models.layers import data_dependent_init
from snailcompress.models.pixelcnnpp_stepper import PixelCNNppStepper
from snailcompress.sampling import stepper_for

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def images(batch: int, channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, channels, height, width), generator=torch.Generator().manual_seed(seed))


def tiny(channels: int, height: int, width: int, dtype=torch.float32, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = presets.build("pixelcnnpp-tiny", channels, **overrides)
    data_dependent_init(model, mixture.to_unit(images(8, channels, height, width, seed + 1)))
    return model.eval().to(dtype)


def full_pass(model, x: torch.Tensor, dtype) -> torch.Tensor:
    with torch.no_grad():
        return model(mixture.to_unit(x, dtype))


CASES = [
    # (channels, (H, W), dtype, overrides of pixelcnnpp-tiny)
    (3, (8, 8), torch.float32, {}),
    (1, (8, 8), torch.float32, {}),
    (3, (12, 8), torch.float32, {}),
    (1, (8, 12), torch.float32, {}),
    (3, (8, 8), torch.float64, {}),
    (1, (12, 8), torch.float64, {"resnets_per_stage": 2}),  # stacks of several blocks per resolution
    (3, (4, 8), torch.float64, {"nonlinearity": "elu"}),  # the coarsest resolution is one row
    (3, (8, 4), torch.float64, {"filters": 8, "mixtures": 2, "dropout": 0.5}),  # eval: dropout off
]


@pytest.mark.parametrize("channels,size,dtype,overrides", CASES)
def test_stepper_matches_full_forward_at_every_position(channels, size, dtype, overrides):
    height, width = size
    model = tiny(channels, height, width, dtype, **overrides)
    x = images(3, channels, height, width, seed=5)
    full = full_pass(model, x, dtype)
    stepper = PixelCNNppStepper(model, 3, height, width)
    tolerance = TOLERANCE[dtype]
    for position in range(height * width):
        i, j = divmod(position, width)
        predicted = stepper.predict()
        assert predicted.dtype == dtype and predicted.shape == (3, full.shape[1])
        torch.testing.assert_close(predicted, full[:, :, i, j], rtol=tolerance, atol=tolerance)
        stepper.commit(x[:, :, i, j])
    assert stepper.position.tolist() == [height * width] * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stepper_slots_keep_positions_of_their_own_and_restart(dtype):
    """As the codec's loop drives a stepper: slot k starts 7k steps late (waiting at position 0 and
    committing zeros there), so at most steps the slots are at different resolutions' positions and
    only some begin a row; slot 2 waits 5 steps at (2, 0), a row start where resolution 1 is due
    (recomputing its position each time); slot 0 restarts on a fourth image once its first is done.
    Every prediction of a running slot matches the full forward pass of the slot's own image."""
    height, width, channels = 8, 8, 3
    n = height * width
    model = tiny(channels, height, width, dtype, seed=3)
    x = images(4, channels, height, width, seed=4)
    full = full_pass(model, x, dtype)
    stepper = PixelCNNppStepper(model, 3, height, width)
    start, image_of = torch.tensor([0, 7, 14]), torch.tensor([0, 1, 2])
    position, done = torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.bool)
    pause = range(30, 35)  # slot 2 reaches position 16 = (2, 0) at step 30
    tolerance = TOLERANCE[dtype]
    checked = 0
    for step in range(2 * n):
        if step == n:  # slot 0 finished image 0: it codes image 3 next
            stepper.restart(torch.tensor([True, False, False]))
            image_of[0], start[0], position[0], done[0] = 3, n, 0, False
        running = (step >= start) & ~done
        assert torch.equal(stepper.position[running], position[running])
        predicted = stepper.predict()
        i, j = position // width, position % width
        for slot in torch.nonzero(running).flatten().tolist():
            expected = full[image_of[slot], :, i[slot], j[slot]]
            torch.testing.assert_close(predicted[slot], expected, rtol=tolerance, atol=tolerance)
            checked += 1
        values = torch.where(running.unsqueeze(1), x[image_of, :, i, j], 0)
        moving = running & torch.tensor([True, True, step not in pause])
        advancing, finishing = moving & (position < n - 1), moving & (position == n - 1)
        stepper.commit(values, advancing)
        position += advancing.long()
        done |= finishing
    assert checked == 4 * n + len(pause)  # every position of the four images, slot 2's paused one 5 more times


def test_stepper_requires_predict_before_commit_and_divisible_sides():
    model = tiny(3, 8, 8)
    stepper = PixelCNNppStepper(model, 1, 8, 8)
    with pytest.raises(RuntimeError):
        stepper.commit(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(UsageError, match="divisible by 4"):  # a user's error: one line in the CLI
        PixelCNNppStepper(model, 1, 8, 6)
    with pytest.raises(UsageError, match="divisible by 4, not 8x6"):  # the full pass, as train, eval and bench run it
        model(torch.zeros(1, 3, 8, 6))


def test_sampler_steps_pixelcnnpp_incrementally():
    assert isinstance(stepper_for(tiny(1, 4, 4), 2, 4, 4), PixelCNNppStepper)
