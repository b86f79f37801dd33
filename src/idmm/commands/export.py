"""`idmm export` and `idmm predict`: use a trained model outside idmm (export it for timm, load
it, predict with it).

An export is two files: `model.safetensors` (timm parameter names; the classifier head of a
fine-tuned model included) and `model.json` (the timm architecture and keyword arguments, the
class names and the preprocessing); `format=onnx` adds `model.onnx` (batch size free), checked
against the torch model with onnxruntime when it is installed. Plain timm loads it with

    info = json.load(open("export/model.json"))
    overlay = dict(info["pretrained_cfg_overlay"], file="export/model.safetensors")
    model = timm.create_model(
        info["model"], pretrained=True, pretrained_cfg_overlay=overlay, **info["kwargs"])
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))

(the overlay carries `num_classes`: without it timm drops a head whose size differs from the
architecture's ImageNet default). timm's transform takes RGB images: as idmm does, composite a
transparent image on `info["preprocessing"]["background"]` (white) first, and convert grayscale
to RGB (`Image.convert("RGB")` repeats the channel); then plain timm predicts what
`idmm predict` does (tests/test_run_export.py).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .. import models
from ..builders import read_meta
from ..config import ConfigError
from ..data.augment import eval_view
from ..data.base import Source
from ..data.cache import build_cache
from ..data.sources import DataError, _images_under, _is_image_name
from ..engine.checkpoint import write_json
from ..rundir import RunDir, check_out


def find_model(path: str | Path) -> Path:
    """The weights of a run directory (`idmm run`, finetune or pretrain: its classifier, else
    its backbone), an export directory or its model.json, or a .safetensors file by idmm."""
    p = Path(path)
    if p.suffix == ".json" and p.is_file():
        p = p.parent
    if p.is_file():
        return p
    run = RunDir(p)
    if not run.exists() and not (p / "model.json").is_file():
        raise ConfigError(
            f"{p}: no trained model found (not an idmm run directory: no config.yaml; nor an "
            "export: no model.json); pass a finished run directory or a .safetensors file"
        )
    return run.model_weights()


def build(meta: dict[str, str]) -> nn.Module:
    """The (untrained) timm model a weights file written by idmm belongs to."""
    classes = json.loads(meta.get("classes", "[]"))
    return models.create_backbone(meta["model"], int(meta["img_size"]), num_classes=len(classes))


def describe(meta: dict[str, str], model: nn.Module) -> dict:
    """The timm recipe of a weights file (and its `model`, from `build`): architecture,
    arguments, classes, preprocessing."""
    classes = json.loads(meta.get("classes", "[]"))
    kwargs = dict(json.loads(meta["timm_kwargs"]), num_classes=len(classes))
    # The preset's class arguments (idmm.models.ConvStem), written as import paths: timm needs
    # them as objects, so they go under import_kwargs, not kwargs.
    preset = models.PRESETS.get(meta["model"], ("", {}))[1]
    objects = {k: kwargs.pop(k) for k, v in preset.items() if isinstance(v, type)}
    img_size = int(meta["img_size"])
    if models.patch_size(model) is not None:
        kwargs["img_size"] = img_size  # ViTs; CNNs and PVTs take no img_size
    crop = float(meta.get("eval_crop", 1.0))
    return {
        "model": meta["timm_arch"],
        "kwargs": kwargs,
        "pretrained_cfg_overlay": {
            "file": "model.safetensors",
            "num_classes": len(classes),
            "mean": json.loads(meta["mean"]),
            "std": json.loads(meta["std"]),
            "input_size": [3, img_size, img_size],
            "crop_pct": crop,
            "crop_mode": "center",
            "interpolation": "bicubic",  # idmm's resize (data/cache.py fit)
        },
        # what timm's pretrained config has no field for; idmm's loader does both (to_rgb)
        "preprocessing": {
            "background": [255, 255, 255],
            "transparency": "composited on background before anything else",
            "grayscale": "converted to RGB, the channel repeated",
        },
        "classes": classes,
        "import_kwargs": objects,
        "idmm_model": meta["model"],
        "method": meta.get("method"),
    }


FORMATS = ("safetensors", "onnx")


def export(run: str | Path, out: str | Path | None = None, format: str = "safetensors") -> Path:
    """Write model.safetensors + model.json for `run` into `out` (default RUN/export); with
    format=onnx also model.onnx."""
    if format not in FORMATS:
        raise ConfigError(f"format={format}: give one of {', '.join(FORMATS)}")
    weights = find_model(run)
    meta = read_meta(weights)
    info = describe(meta, build(meta))
    out_dir = check_out(Path(out) if out else RunDir.find(run).export_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "model.safetensors"
    if weights.resolve() != target.resolve():
        tmp = out_dir / ".model.safetensors.tmp"
        shutil.copyfile(weights, tmp)
        tmp.replace(target)
    if format == "onnx":
        info["onnx"] = {"file": "model.onnx",
                        **export_onnx(load_model(weights), out_dir / "model.onnx")}  # fmt: skip
    write_json(out_dir / "model.json", info)
    return out_dir


def export_onnx(model: nn.Module, path: Path) -> dict:
    """model.onnx (input `image`, N x 3 x H x W, any N) via torch.export, then the same outputs
    checked with onnxruntime on a batch other than the one traced; returns the check."""
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise ConfigError(
            "format=onnx needs the onnx packages: pip install 'idmm[onnx]' (onnx, onnxscript, "
            "onnxruntime)"
        ) from None
    size = model.pretrained_cfg["input_size"]
    x = torch.randn(2, *size)
    # the exporter cannot trace the fused kernel with a float bias (idmm-rpb's attention)
    models.set_fused_attention(model, False)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        torch.onnx.export(model, (x,), str(tmp), dynamo=True, verbose=False,
                          input_names=["image"], output_names=["output"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})  # fmt: skip
    tmp.replace(path)
    try:
        import onnxruntime
    except ImportError:
        return {"checked": False}
    check = torch.randn(5, *size)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": check.numpy()})
    with torch.no_grad():
        want = model(check).numpy()
    diff = float(abs(got - want).max())
    if diff > 1e-3 * max(1.0, float(abs(want).max())):
        raise RuntimeError(f"{path}: onnxruntime's outputs differ from torch's by {diff:.2e}")
    return {"checked": True, "max_abs_diff": diff}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A timm model with idmm's weights, in eval mode. `model.pretrained_cfg` holds its
    preprocessing (mean, std, input_size, crop_pct) and `label_names` (fine-tuned models)."""
    weights = find_model(path)
    meta = read_meta(weights)
    model = build(meta)
    info = describe(meta, model)
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{weights} does not match {meta['model']}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    overlay = {k: v for k, v in info["pretrained_cfg_overlay"].items() if k != "file"}
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {}, **overlay)
    model.pretrained_cfg["label_names"] = info["classes"]
    return model.to(device).eval()


def _image_files(inputs: list[str]) -> list[str]:
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = _images_under(str(p))
            if not found:
                raise DataError(f"{p} holds no images ({', '.join(['.jpg', '.png', '...'])})")
            files += found
        elif p.is_file():
            files.append(str(p))
        else:
            raise DataError(f"{p} does not exist")
    if not files:
        raise DataError("no images given: idmm predict checkpoint=RUN IMAGE_OR_FOLDER ...")
    return files


def preprocessed(model: nn.Module, images: list[str], batch_size: int = 256):
    """The image files under `images` (files or folders) as the model's input, the way idmm
    evaluates: (paths in order, {path: reason} for unreadable ones, batches of (paths, tensor))."""
    files = _image_files(images)
    for f in files:
        if not _is_image_name(Path(f).name):
            raise DataError(f"{f} is not an image file name this tool reads")
    pc = model.pretrained_cfg
    size, crop = pc["input_size"][-1], pc["crop_pct"]
    # An unreadable image does not stop the others: it gets an error entry with the reason
    # instead (not the cache's warning); only when none is readable is it an error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cached = build_cache(Source("images", "test", files, None, []), round(size / crop),
                             skip_bad=True)  # fmt: skip
    kept = [files[i] for i in cached.kept]
    errors = {files[i]: reason for i, reason in cached.errors.items()}

    def batches():
        for i in range(0, len(kept), batch_size):
            x = eval_view(cached.images[i : i + batch_size], size, pc["mean"], pc["std"], crop)
            yield kept[i : i + batch_size], x

    return files, errors, batches()


@torch.no_grad()
def predict(checkpoint: str | Path, images: list[str], top_k: int = 5, batch_size: int = 256):
    """Top-k classes with probabilities for each image: [{"path", "predictions": [...]}]."""
    model = load_model(checkpoint)
    classes = model.pretrained_cfg["label_names"]
    if not classes:
        raise ConfigError(
            f"{checkpoint} is a pre-trained backbone without a classifier; fine-tune it first "
            "(idmm finetune init=... ) or use idmm run"
        )
    files, errors, batches = preprocessed(model, images, batch_size)
    out = {f: {"path": f, "predictions": [], "error": reason} for f, reason in errors.items()}
    for paths, x in batches:
        probs = model(x).float().softmax(-1)
        p, idx = probs.topk(min(top_k, len(classes)), dim=1)
        for row_p, row_i, f in zip(p.tolist(), idx.tolist(), paths):
            preds = [{"class": classes[j], "prob": q} for j, q in zip(row_i, row_p)]
            out[f] = {"path": f, "predictions": preds}
    return [out[f] for f in files]
