"""model=auto / img_size=auto from the data and the machine, and the memory check before a run."""

import types

import pytest
import torch
import yaml
from PIL import Image

from idmm import auto, cli
from idmm.config import ConfigError, build_config
from idmm.data.sources import open_source
from idmm.models import create_backbone


def _cfg(**overrides):
    return build_config(overrides=overrides)


def test_known_datasets_and_the_gpu_keep_their_sizes():
    fm = auto.resolve_model(_cfg(data="fashion-mnist"), log=False)
    assert fm == ("vit_cpu_small", 28, None)
    gpu = _cfg(data="flowers102", device="cuda")
    assert auto.resolve_model(gpu, log=False) == ("deit_tiny_patch16_224", 112, None)
    fixed = _cfg(model="vit_cpu", img_size=32)
    assert auto.resolve_model(fixed, log=False) == ("vit_cpu", 32, None)


@pytest.mark.parametrize("n,side,size", [
    (200, 300, 48),     # few images: as large as 48 px
    (2040, 300, 24),    # FMNIST-2040's count: 24 px
    (1000, 300, 32),    # twice fewer: sqrt(2) larger
    (10000, 300, 16),   # many: 16 px
    (200, 40, 40),      # never above the images' own size
    (2000, 12, 16),     # nor below 16
])  # fmt: skip
def test_cpu_size_keeps_an_epoch_to_the_cpu_recipes_pixels(n, side, size):
    assert auto.cpu_size(n, side) == size


def test_native_side_reads_headers_of_a_folder(tmp_path):
    for name, wh in (("a", (300, 200)), ("b", (100, 100)), ("c", (50, 80))):
        (tmp_path / "x" / name).mkdir(parents=True)
        Image.new("RGB", wh).save(tmp_path / "x" / name / "0.png")
    assert auto.native_side(open_source(str(tmp_path / "x"))) == 100  # median shorter side


def test_a_folder_on_the_cpu_gets_the_cpu_recipes_model_at_its_size(tmp_path, capsys):
    root = tmp_path / "imgs"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (48, 40), (40 * i, 100 * c, 0)).save(root / f"c{c}" / f"{i}.png")
    out = tmp_path / "run"
    assert cli.main(["pretrain", f"data={root}", "epochs=1", "progress=log", "threads=1",
                     "device=cpu", f"out={out}"]) == 0  # fmt: skip
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["model"], saved["img_size"]) == ("vit_cpu_small_conv", 40)
    assert saved["aug"]["local_size"] == 20  # half, as the CPU recipe's 16 / 8
    log = (out / "train.log").read_text()
    assert "model=auto/img_size=auto -> vit_cpu_small_conv at 40 px: a CPU" in log
    assert "memory: ~" in log and "GB free" in log


def _rt(precision="fp32"):
    return types.SimpleNamespace(precision=precision, device=torch.device("cpu"))


def test_memory_check_halves_an_automatic_batch_and_refuses_a_fixed_one(monkeypatch):
    model = create_backbone("deit_tiny_patch16_224", 112)
    per_image = 2 * auto.activation_bytes(model, 112, 4)
    monkeypatch.setattr(auto, "available_bytes", lambda device: 40 * per_image)
    cfg = types.SimpleNamespace(batch_size=256)
    auto.check_memory(cfg, model, [(2, 112)], _rt(), auto_batch=True)
    assert cfg.batch_size == 16  # the first halving under 80% of 40 images' worth
    cfg.batch_size = 256
    with pytest.raises(ConfigError, match=r"batch_size=256 needs ~.* GB .* batch_size<=\d+"):
        auto.check_memory(cfg, model, [(2, 112)], _rt(), auto_batch=False)
    cfg.batch_size = 8
    auto.check_memory(cfg, model, [(2, 112)], _rt(), auto_batch=False)  # fits: unchanged
    assert cfg.batch_size == 8
    # bf16 keeps a little more than half the bytes (measured: some activations stay fp32)
    ratio = auto.activation_bytes(model, 112, 2) / auto.activation_bytes(model, 112, 4)
    assert 0.5 < ratio < 0.65


class _Images:
    """A training Source as resolve_epochs reads it: a count and the images' shape."""

    def __init__(self, n, side):
        self.array, self.items = types.SimpleNamespace(shape=(n, side, side, 3)), None
        self.n = n

    def __len__(self):
        return self.n


@pytest.mark.parametrize("n,pre,ft", [
    (200, 120, 60),    # 48 px: fewer pixels an epoch than the recipe's -> twice (the most)
    (2040, 60, 30),    # 24 px: the CPU recipe's epochs
    (10000, 28, 14),   # 16 px: 2.2 times the recipe's pixels an epoch -> 0.46 of its epochs
    (200000, 10, 5),   # at least a sixth of the recipe's
])  # fmt: skip
def test_cpu_epochs_keep_the_run_about_as_long_as_the_cpu_recipes(n, pre, ft):
    cfg = _cfg(data="some/folder", device="cpu")
    auto.resolve_epochs(cfg, lambda: _Images(n, 300))
    assert (cfg.epochs, cfg.finetune.epochs) == (pre, ft)


def test_gpu_epochs_and_given_epochs():
    gpu = _cfg(data="some/folder", device="cuda")
    auto.resolve_epochs(gpu, lambda: pytest.fail("a GPU does not need the images"))
    assert (gpu.epochs, gpu.finetune.epochs) == (100, 100)
    given = _cfg(data="some/folder", device="cpu", epochs=7, **{"finetune.epochs": "auto"})
    auto.resolve_epochs(given, lambda: _Images(2040, 300))
    assert (given.epochs, given.finetune.epochs) == (7, 30)  # only what is auto is set


def test_a_folder_run_gets_its_epochs_resolved_and_recorded(tmp_path):
    from idmm.builders import make_config

    root = tmp_path / "imgs"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (48, 40), (40 * i, 100 * c, 0)).save(root / f"c{c}" / f"{i}.png")
    cfg = make_config(data=str(root), device="cpu")
    assert (cfg.epochs, cfg.finetune.epochs) == (120, 60)  # 20 images at 40 px: twice
    with pytest.raises(Exception, match="nowhere"):
        make_config(data=str(tmp_path / "nowhere"), device="cpu")
    cli.main(["pretrain", f"data={root}", "progress=log", "threads=1", "device=cpu",
              "img_size=16", "epochs=1", f"out={tmp_path / 'run'}"])  # fmt: skip
    log = (tmp_path / "run" / "train.log").read_text()
    assert "epochs=auto -> finetune.epochs=60: a CPU: the CPU recipe's 60 + 30 x 2.00" in log
