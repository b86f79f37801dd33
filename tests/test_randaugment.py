import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from idmm.data import randaugment as ra
from idmm.data.randaugment import OPS, rand_augment

BILINEAR = InterpolationMode.BILINEAR


def _images(b: int = 8, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Natural-looking colour images: smooth gradients, a bright blob, noise; uint8 levels in
    [~0.05, ~0.85] so that no channel is constant or already spans [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    phase = torch.rand(b, 3, 1, 1, generator=gen) * 2 * math.pi
    cx, cy = torch.rand(2, b, 1, 1, 1, generator=gen) * 0.6 + 0.2
    x = 0.3 + 0.2 * torch.sin(3 * xx + 2 * yy + phase)
    x = x + 0.3 * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)
    x = x + 0.05 * torch.rand(b, 3, size, size, generator=gen)
    return (x.clamp(0.05, 0.85) * 255).round() / 255


def _ones(n, v):
    return torch.full((n,), float(v))


def test_shape_dtype_range():
    x = _images(16)
    y = rand_augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    assert not torch.equal(x, y)
    assert torch.equal(x, _images(16))  # the input is not modified in place


def test_reproducible_and_seed_dependent():
    x = _images(16)
    a = rand_augment(x, torch.Generator().manual_seed(3))
    b = rand_augment(x, torch.Generator().manual_seed(3))
    c = rand_augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert (a - c).abs().amax((1, 2, 3)).gt(1e-3).sum() >= 8


def test_generator_use_does_not_depend_on_data_or_ops():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    rand_augment(_images(8, seed=1), g1)
    rand_augment(_images(8, seed=2), g2, ops=("Identity", "Equalize"))
    assert torch.equal(g1.get_state(), g2.get_state())


def test_per_sample_randomness():
    x = _images(1).expand(16, -1, -1, -1).contiguous()  # one image 16 times
    y = rand_augment(x, torch.Generator().manual_seed(0))
    flat = y.flatten(1)
    distinct = torch.cdist(flat, flat).gt(1e-3).sum(1)
    assert distinct.float().mean() > 12  # nearly every pair differs


def test_noop_cases():
    x = _images(8)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(rand_augment(x, g, num_ops=0), x)
    assert torch.equal(rand_augment(x, g, num_ops=3, ops=("Identity",)), x)


def test_unknown_op_raises():
    with pytest.raises(ValueError, match="Blur") as err:
        rand_augment(_images(2), torch.Generator(), ops=("Rotate", "Blur"))
    assert "Identity" in str(err.value) and "Posterize" in str(err.value)


@pytest.mark.parametrize("name", [o for o in OPS if o != "Identity"])
def test_each_op_changes_every_image_and_keeps_range(name):
    x = _images(8)
    y = rand_augment(x, torch.Generator().manual_seed(0), num_ops=1, ops=(name,))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert (y - x).abs().mean((1, 2, 3)).min() > 2e-3


def test_magnitude_scale():
    x = _images(8)
    g = torch.Generator().manual_seed(0)
    # m = 10: solarize threshold 0 inverts everything; m = 0: threshold 1 inverts nothing here
    full = rand_augment(x, g, 1, 10.0, 0.0, ops=("Solarize",))
    assert torch.allclose(full, 1 - x)
    assert torch.equal(rand_augment(x, g, 1, 0.0, 0.0, ops=("Solarize",)), x)
    # m = 10: rotation by +-30 degrees, each sample its own sign, both signs present
    y = rand_augment(x, g, 1, 10.0, 0.0, ops=("Rotate",))
    plus, minus = ra._rotate(x, _ones(8, 30)), ra._rotate(x, _ones(8, -30))
    is_plus = (y - plus).abs().amax((1, 2, 3)) < 1e-5
    is_minus = (y - minus).abs().amax((1, 2, 3)) < 1e-5
    assert (is_plus | is_minus).all() and is_plus.any() and is_minus.any()
    # m = 10: translation by 0.45 of the width
    y = rand_augment(x, g, 1, 10.0, 0.0, ops=("TranslateX",))
    shifts = [ra._translate(x, _ones(8, s * 0.45 * 24), _ones(8, 0)) for s in (1, -1)]
    err = torch.stack([(y - s).abs().amax((1, 2, 3)) for s in shifts]).amin(0)
    assert err.max() < 1e-5
    # m = 9 (the default) posterizes to 4 - int(3.6) = 1 bit: two levels per channel
    y = rand_augment(x, g, 1, 9.0, 0.0, ops=("Posterize",))
    assert set(torch.unique(y * 255).round().tolist()) <= {0.0, 128.0}


def test_magnitude_noise_is_per_sample():
    x = _images(1).expand(32, -1, -1, -1).contiguous()
    y = rand_augment(x, torch.Generator().manual_seed(0), 1, 5.0, 2.0, ops=("Brightness",))
    ratios = (y.mean((1, 2, 3)) / x.mean((1, 2, 3))).round(decimals=3)
    assert torch.unique(ratios).numel() > 16  # not just the two factors 1 +- 0.45


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda x: ra._autocontrast(x), TF.autocontrast),
        # a threshold equal to some pixel values: those are inverted too (>=)
        (lambda x: ra._solarize(x, _ones(4, 0.4)), lambda x: TF.solarize(x, 0.4)),
        (lambda x: ra._brightness(x, _ones(4, 1.6)), lambda x: TF.adjust_brightness(x, 1.6)),
        (lambda x: ra._brightness(x, _ones(4, 0.3)), lambda x: TF.adjust_brightness(x, 0.3)),
        (lambda x: ra._color(x, _ones(4, 1.7)), lambda x: TF.adjust_saturation(x, 1.7)),
        (lambda x: ra._contrast(x, _ones(4, 0.4)), lambda x: TF.adjust_contrast(x, 0.4)),
        (lambda x: ra._sharpness(x, _ones(4, 1.8)), lambda x: TF.adjust_sharpness(x, 1.8)),
        (lambda x: ra._sharpness(x, _ones(4, 0.2)), lambda x: TF.adjust_sharpness(x, 0.2)),
        (lambda x: ra._rotate(x, _ones(4, 23)), lambda x: TF.rotate(x, 23.0, BILINEAR)),
        (
            lambda x: ra._translate(x, _ones(4, 3), _ones(4, -5)),
            lambda x: TF.affine(x, 0.0, [3, -5], 1.0, [0.0, 0.0], BILINEAR),
        ),
        # PIL / timm shear about the top-left corner: torchvision's RandAugment uses center=[0, 0]
        (
            lambda x: ra._shear_x(x, _ones(4, 0.25)),
            lambda x: TF.affine(
                x, 0.0, [0, 0], 1.0, [math.degrees(math.atan(0.25)), 0.0], BILINEAR, center=[0, 0]
            ),
        ),
        (
            lambda x: ra._shear_y(x, _ones(4, -0.3)),
            lambda x: TF.affine(
                x, 0.0, [0, 0], 1.0, [0.0, math.degrees(math.atan(-0.3))], BILINEAR, center=[0, 0]
            ),
        ),
    ],
)
def test_float_ops_match_torchvision(ours, theirs):
    x = _images(4)
    # _gray uses luma 0.299 where torchvision uses 0.2989: allow 1e-4
    assert (ours(x) - theirs(x)).abs().max() < 1e-4


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_posterize_matches_torchvision(bits):
    u8 = (_images(4) * 255).round().to(torch.uint8)
    ours = ra._posterize(u8.float() / 255, _ones(4, bits))
    assert torch.equal((ours * 255).round().to(torch.uint8), TF.posterize(u8, bits))


def test_equalize_matches_torchvision():
    x = _images(4)
    x[1, 2] = 0.5  # a constant channel is left as it is
    u8 = (x * 255).round().to(torch.uint8)
    ours = ra._equalize(x)
    assert torch.equal((ours * 255).round().to(torch.uint8), TF.equalize(u8))
    assert torch.equal(ours[1, 2], x[1, 2]) and not torch.equal(ours[0], x[0])


def test_helpers_use_per_sample_strengths():
    x = _images(3)
    cases = [
        (ra._solarize, torch.tensor([0.2, 0.5, 0.9])),
        (ra._contrast, torch.tensor([0.1, 1.0, 1.9])),
        (ra._sharpness, torch.tensor([0.1, 1.0, 1.9])),
        (ra._rotate, torch.tensor([-30.0, 0.0, 12.0])),
        (ra._posterize, torch.tensor([1, 3, 8])),
    ]
    for fn, s in cases:
        batched = fn(x, s)
        single = torch.cat([fn(x[i : i + 1], s[i : i + 1]) for i in range(3)])
        assert torch.allclose(batched, single, atol=1e-6), fn.__name__
        assert not torch.allclose(batched[0], batched[2], atol=1e-3), fn.__name__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_and_matches_cpu_helpers():
    x = _images(16)
    g = torch.Generator(device="cuda").manual_seed(0)
    y = rand_augment(x.cuda(), g)
    assert y.device.type == "cuda" and y.min() >= 0 and y.max() <= 1
    assert torch.equal(ra._equalize(x.cuda()).cpu(), ra._equalize(x))
    assert torch.allclose(
        ra._rotate(x.cuda(), _ones(16, 7).cuda()).cpu(), ra._rotate(x, _ones(16, 7)), atol=1e-5
    )


def test_uda_style_probability_and_uniform_magnitude():
    """The paper's fine-tuning RandAugment: each op with p = 0.5, magnitude ~ U(1, 9)."""
    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(rand_augment(x, g, 2, (1.0, 9.0), p=0.0), x)
    y = rand_augment(x, torch.Generator().manual_seed(0), 2, (1.0, 9.0), p=0.5)
    changed = (y - x).abs().flatten(1).amax(1) > 1e-6
    # with p = 0.5 per op (and Identity among the ops) some images stay untouched, most do not
    assert 0.05 < changed.float().mean() < 0.95
