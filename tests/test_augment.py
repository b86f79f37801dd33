import numpy as np
import pytest
import torch

from idmm.config import AugConfig, ConfigError, build_config
from idmm.data.augment import (
    MultiCrop,
    color_jitter,
    gaussian_blur,
    random_grayscale,
    random_resized_crop,
)
from idmm.data.mixing import cutmix


def _views(local_size=16):
    return MultiCrop(AugConfig(local_size=local_size), 28, local_size, [0.5] * 3, [0.25] * 3)


def test_multicrop_shapes_and_order(uint8_batch):
    g = torch.Generator().manual_seed(0)
    glob, loc = _views()(uint8_batch, g)
    assert glob.shape == (2 * 16, 3, 28, 28)
    assert loc.shape == (4 * 16, 3, 16, 16)
    assert glob.dtype == torch.float32 and torch.isfinite(glob).all()
    # normalised [0, 1] pixels with mean .5, std .25 -> values in [-2, 2]
    assert glob.min() >= -2 - 1e-5 and glob.max() <= 2 + 1e-5


def test_multicrop_is_random_per_sample_and_reproducible(uint8_batch):
    same = uint8_batch[:1].expand(8, -1, -1, -1).contiguous()  # one image 8 times
    a = _views()(same, torch.Generator().manual_seed(1))[0]
    # different crops of the same image differ from one another...
    diffs = [(a[0] - a[i]).abs().mean().item() for i in range(1, 8)]
    assert min(diffs) > 1e-3
    # ...and the same generator seed gives the same crops
    b = _views()(same, torch.Generator().manual_seed(1))[0]
    assert torch.equal(a, b)


def test_full_crop_without_flip_is_identity(uint8_batch):
    x = uint8_batch.float() / 255
    g = torch.Generator().manual_seed(0)
    y = random_resized_crop(x, 28, (1.0, 1.0), g, ratio=(1.0, 1.0), flip_p=0.0)
    assert torch.allclose(x, y, atol=1e-5)
    flipped = random_resized_crop(x, 28, (1.0, 1.0), g, ratio=(1.0, 1.0), flip_p=1.0)
    assert torch.allclose(x.flip(-1), flipped, atol=1e-5)


def test_color_ops_keep_range_and_respect_probability(uint8_batch):
    x = uint8_batch.float() / 255
    g = torch.Generator().manual_seed(0)
    assert torch.equal(color_jitter(x, (0.4, 0.4, 0.2, 0.1), 0.0, g), x)
    y = color_jitter(x, (0.4, 0.4, 0.2, 0.1), 1.0, g)
    assert y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)
    assert torch.equal(random_grayscale(x, 0.0, g), x)
    assert torch.equal(gaussian_blur(x, 0.0, (0.1, 2.0), g), x)
    blurred = gaussian_blur(x, 1.0, (1.5, 2.0), g)

    # blur lowers the high-frequency energy of every image
    def tv(t):
        return (t[..., 1:] - t[..., :-1]).abs().mean((1, 2, 3))

    assert (tv(blurred) < tv(x)).all()


def test_grayscale_makes_channels_equal():
    rgb = torch.rand(4, 3, 8, 8)
    y = random_grayscale(rgb, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(y[:, 0], y[:, 1]) and torch.allclose(y[:, 1], y[:, 2])


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_lambda_matches_pasted_area(uint8_batch, seed):
    x = torch.arange(16).float().view(16, 1, 1, 1).expand(16, 3, 28, 28).contiguous()
    rng = np.random.default_rng(seed)
    mixed, mix = cutmix(x, 0.5, rng, torch.Generator().manual_seed(seed))
    assert mix.lam >= 0.5 - 1 / 28  # forced to >= .5 before the box is clipped to the image
    own = (mixed == x).float().mean((1, 2, 3))  # fraction of pixels still from the row itself
    moved = mix.perm != torch.arange(16)
    assert torch.allclose(own[moved], torch.full_like(own[moved], mix.lam), atol=1e-6)
    y0, y1, x0, x1 = mix.box
    assert torch.equal(mixed[:, :, y0:y1, x0:x1], x[mix.perm][:, :, y0:y1, x0:x1])


def test_shard_generator_splits_the_global_draws_by_rank(uint8_batch):
    """Rank r of K gets exactly the crops that global samples r, r+K, ... get in one process."""
    from idmm.data.augment import ShardGenerator

    views = _views(16)
    full = views(uint8_batch, torch.Generator().manual_seed(3))
    for rank in range(2):
        g = ShardGenerator(torch.Generator().manual_seed(3), 2, rank)
        part = views(uint8_batch[rank::2], g)
        for whole, mine in zip(full, part):
            count = whole.shape[0] // 16
            expect = whole.view(count, 16, *whole.shape[1:])[:, rank::2].reshape(mine.shape)
            assert torch.allclose(mine, expect, atol=1e-5)


def test_progressive_resolution_grows_the_global_crops(uint8_batch):
    """From 4 to 16 px by half of training, in steps of gcd(4, 16) = 4; local crops stay."""
    views = MultiCrop(AugConfig(progressive_from=4, local_size=8), 16, 8, [0.5] * 3, [0.25] * 3)
    sizes = [views.at_progress(p) for p in (0.0, 0.125, 0.25, 0.375, 0.5, 0.9)]
    assert sizes == [4, 4, 8, 12, 16, 16]
    views.at_progress(0.25)
    glob, loc = views(uint8_batch, torch.Generator().manual_seed(0))
    assert glob.shape[-1] == 8 and loc.shape[-1] == 8
    # off: always the full size
    plain = MultiCrop(AugConfig(), 16, 8, [0.5] * 3, [0.25] * 3)
    assert plain.at_progress(0.0) == 16


def test_progressive_resolution_from_above_the_size_is_refused():
    with pytest.raises(ConfigError, match="aug.progressive_from=32 is above img_size=16"):
        MultiCrop(AugConfig(progressive_from=32), 16, 8, [0.5] * 3, [0.25] * 3)


def test_progressive_resolution_is_not_planned_by_a_budget():
    with pytest.raises(ConfigError, match="'budget' must be unset with aug.progressive_from"):
        build_config(overrides={"budget": "5m", "aug.progressive_from": 8})
