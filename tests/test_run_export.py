"""`idmm run` end to end on real Fashion-MNIST pixels, then export, timm loading and predict."""

import json
from pkgutil import resolve_name

import numpy as np
import pytest
import timm
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

import idmm
from idmm.builders import build_backbone, export_backbone
from idmm.cli import main
from idmm.commands.export import preprocessed
from idmm.config import ConfigError, build_config

ARGS = ["data=fashion-mnist", "subset_per_class=10", "model=vit_test", "epochs=2",
        "batch_size=25", "finetune.epochs=2", "finetune.batch_size=25", "finetune.eval_every=1",
        "baseline=true", "threads=2", "progress=log", "linear.epochs=20",
        "aug.local_size=16"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "fm"
    assert main(["run", *ARGS, f"out={out}"]) == 0
    return out


def test_run_writes_every_promised_file(run_dir, capsys):
    for name in ("config.yaml", "results.json", "report.md", "plots/curves.png",
                 "pretrain/backbone.safetensors", "pretrain/metrics.jsonl",
                 "pretrain/checkpoints/last.ckpt", "finetune/model.safetensors",
                 "finetune/metrics.jsonl", "finetune/plots/confusion.png", "finetune/train.log",
                 "scratch/model.safetensors"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("knn", "linear", "finetune", "scratch"):
        assert 0.0 <= results[key]["top1"] <= 1.0, key
    ft = results["finetune"]
    assert ft["val_top1"] <= ft["val_top1_best"] and ft["top1"] <= ft["top5"]
    assert results["scratch"]["epochs"] == 4  # the same total epochs as 2 + 2
    report = (run_dir / "report.md").read_text()
    assert f"{ft['top1'] * 100:.2f}%" in report and "plots/curves.png" in report
    assert f"{results['linear']['top1'] * 100:.2f}%" in report
    # each evaluation also went to the pre-training run's own results and metrics
    pre = json.loads((run_dir / "pretrain" / "results.json").read_text())
    assert pre["knn"]["top1"] == results["knn"]["top1"] and "linear" in pre
    evals = [json.loads(x).get("eval") for x in (run_dir / "pretrain/metrics.jsonl").open()]
    assert "knn" in evals and "linear" in evals


def test_eval_linear_cli(run_dir, capsys):
    assert main(["eval", "linear", f"checkpoint={run_dir / 'pretrain'}", "linear.epochs=5"]) == 0
    assert "linear top-1:" in capsys.readouterr().out


def _timm_from_export(export_dir):
    info = json.loads((export_dir / "model.json").read_text())
    overlay = dict(info["pretrained_cfg_overlay"], file=str(export_dir / "model.safetensors"))
    classes = {k: resolve_name(v) for k, v in info["import_kwargs"].items()}
    return info, timm.create_model(
        info["model"], pretrained=True, pretrained_cfg_overlay=overlay, **info["kwargs"], **classes
    ).eval()


def test_export_loads_in_plain_timm_with_the_same_outputs(run_dir, tmp_path):
    assert main(["export", f"run={run_dir}", f"out={tmp_path / 'exp'}"]) == 0
    info, model = _timm_from_export(tmp_path / "exp")
    assert info["kwargs"]["num_classes"] == 10 and len(info["classes"]) == 10
    ours = idmm.load_model(tmp_path / "exp")
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), ours(x), atol=1e-5)
        # the head came along: the logits are the fine-tuned ones, not a fresh random head
        assert torch.allclose(model.head.weight, ours.head.weight)
    assert ours.pretrained_cfg["label_names"] == info["classes"]


def test_conv_stem_backbone_exports_to_plain_timm(tmp_path):
    """The CPU recipe's model passes a class (its stem) to timm: the export names it by import
    path under import_kwargs, and timm rebuilds the same network from it."""
    cfg = build_config(
        overrides={
            "model": "vit_cpu_small_conv",
            "img_size": "16",
            "data.mean": "0.3,0.3,0.3",
            "data.std": "0.3,0.3,0.3",
        }
    )
    ours = build_backbone(cfg).eval()
    export_backbone(cfg, ours, tmp_path / "backbone.safetensors", "idmm")
    info, model = _timm_from_export(idmm.export(tmp_path / "backbone.safetensors", tmp_path / "x"))
    assert info["import_kwargs"] == {"embed_layer": "idmm.models.ConvStem"}
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), ours(x), atol=1e-5)


def test_backbone_export_loads_in_timm(run_dir, tmp_path):
    out = idmm.export(run_dir / "pretrain", tmp_path / "bb")
    info, model = _timm_from_export(out)
    assert info["kwargs"]["num_classes"] == 0 and info["classes"] == []
    ours = idmm.load_model(out)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert model(x).shape == (2, 48) and torch.allclose(model(x), ours(x), atol=1e-5)


def _write_images(folder, fmnist_images, n):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(fmnist_images[i]).save(folder / f"item {i}.png")
    return sorted(str(p) for p in folder.iterdir())


def test_predict_table_and_json(run_dir, tmp_path, fmnist_images, capsys):
    files = _write_images(tmp_path / "imgs", fmnist_images, 3)
    assert main(["predict", f"checkpoint={run_dir}", str(tmp_path / "imgs"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == files
    classes = idmm.load_model(run_dir).pretrained_cfg["label_names"]
    for r in rows:
        probs = [p["prob"] for p in r["predictions"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(p["class"] in classes for p in r["predictions"])
    # the same numbers as the model on DeiT's preprocessing: resize to size / crop, centre crop
    model = idmm.load_model(run_dir)
    pc = model.pretrained_cfg
    x = torch.from_numpy(fmnist_images[:1]).unsqueeze(1).expand(-1, 3, -1, -1)
    x = TF.resize(x, [round(28 / pc["crop_pct"])], interpolation=TF.InterpolationMode.BICUBIC)
    x = TF.center_crop(x, [28, 28]).float().div(255)
    x = (x - torch.tensor(pc["mean"]).view(1, 3, 1, 1)) / torch.tensor(pc["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        top = model(x).softmax(-1)[0].max().item()
    assert abs(rows[0]["predictions"][0]["prob"] - top) < 0.02
    assert main(["predict", f"checkpoint={run_dir}", files[0], "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(files[0]) and line.count("%") == 2


def test_predict_errors_are_clear(run_dir, tmp_path, capsys):
    with pytest.raises(ConfigError, match="fine-tune it first"):
        idmm.predict(run_dir / "pretrain", [str(run_dir / "plots" / "curves.png")])
    assert main(["predict", f"checkpoint={run_dir}", str(tmp_path / "nope.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert main(["predict", f"checkpoint={run_dir}", str(bad)]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert main(["export", f"run={tmp_path}"]) == 2
    assert "no trained model" in capsys.readouterr().err


def test_knn_and_linear_share_one_feature_pass(run_dir, monkeypatch):
    """What `idmm run` does: the frozen features are computed once and passed to both probes
    (no cache hidden in a module: a second evaluation computes them again)."""
    from idmm.commands import evaluate

    calls = []
    real = evaluate.extract_features
    monkeypatch.setattr(evaluate, "extract_features",
                        lambda *a, **k: calls.append(1) or real(*a, **k))  # fmt: skip
    feats = evaluate.frozen_features(run_dir / "pretrain", **{"linear.epochs": 5})
    assert len(calls) == 3  # train, val and test splits
    evaluate.knn(feats), evaluate.linear(feats)
    assert len(calls) == 3
    idmm.evaluate_knn(run_dir)  # an `idmm run` directory: its pre-training is evaluated
    assert len(calls) == 6


def test_resuming_a_finished_run_keeps_its_numbers(run_dir, capsys):
    before = json.loads((run_dir / "results.json").read_text())
    assert main(["run", *ARGS, f"out={run_dir}", "resume=true"]) == 0
    after = json.loads((run_dir / "results.json").read_text())
    for key in ("finetune", "scratch"):
        assert after[key]["top1"] == before[key]["top1"]
        assert after[key]["epochs"] == before[key]["epochs"]
        assert after[key]["time_s"] == before[key]["time_s"]
    assert "| 2 + 2 |" in capsys.readouterr().out


def _odd_images(folder, fmnist_images):
    """Two transparent PNGs with bright garbage under their transparent pixels (as clip-art
    often has) and a grayscale one."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(2):
        g = fmnist_images[i]
        rgba = np.zeros((*g.shape, 4), np.uint8)
        rgba[..., :3] = 255 - g[..., None]  # dark garment on ...
        rgba[..., 3] = np.where(g > 40, 255, 0)  # ... a transparent background
        rgba[g <= 40, :3] = (0, 200, 0)  # whose colour is green garbage
        paths.append(folder / f"clip {i}.png")
        Image.fromarray(rgba, "RGBA").save(paths[-1])
    paths.append(folder / "gray.png")
    Image.fromarray(fmnist_images[2], "L").save(paths[-1])
    return [str(p) for p in paths]


def test_plain_timm_with_its_own_transforms_predicts_what_idmm_predicts(
    run_dir, tmp_path, fmnist_images
):
    """The export's pretrained config (resize, crop, interpolation, mean, std) drives timm's
    own eval transform; with the export's background for transparency and RGB for grayscale,
    plain timm gets idmm predict's probabilities on transparent and grayscale images."""
    files = _odd_images(tmp_path / "odd", fmnist_images)
    info, model = _timm_from_export(idmm.export(run_dir, tmp_path / "exp"))
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    background = tuple(info["preprocessing"]["background"])
    rows = idmm.predict(run_dir, files, top_k=1)
    for path, row in zip(files, rows):
        image = Image.open(path)
        if image.mode == "RGBA":
            image = Image.alpha_composite(Image.new("RGBA", image.size, (*background, 255)), image)
        x = transform(image.convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]
        top = row["predictions"][0]
        assert info["classes"][int(probs.argmax())] == top["class"], path
        assert abs(float(probs.max()) - top["prob"]) < 1e-4, path
    # without the background the transparent images are other inputs: the step matters
    naive = transform(Image.open(files[0]).convert("RGB"))
    composited = transform(
        Image.alpha_composite(
            Image.new("RGBA", (28, 28), (*background, 255)), Image.open(files[0])
        ).convert("RGB")
    )
    assert (naive - composited).abs().max() > 0.5


def test_onnx_export_matches_torch(run_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")  # in the dev extra: CI runs this
    import onnxruntime

    out = tmp_path / "onnx"
    assert main(["export", f"run={run_dir}", f"out={out}", "format=onnx"]) == 0
    assert "outputs match torch's" in capsys.readouterr().out
    info = json.loads((out / "model.json").read_text())
    assert info["onnx"]["checked"] and info["onnx"]["max_abs_diff"] < 1e-3
    session = onnxruntime.InferenceSession(str(out / "model.onnx"),
                                           providers=["CPUExecutionProvider"])  # fmt: skip
    x = torch.randn(3, 3, 28, 28)
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = idmm.load_model(out)(x)
    assert got.shape == (3, 10) and np.allclose(got, want.numpy(), atol=1e-4)
    assert main(["export", f"run={run_dir}", f"out={out}", "format=tflite"]) == 2
    assert "format=tflite: give one of safetensors, onnx" in capsys.readouterr().err


def test_embed_writes_features_with_their_paths(run_dir, tmp_path, fmnist_images, capsys):
    files = _write_images(tmp_path / "imgs", fmnist_images, 4)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "e" / "emb.npz"
    assert main(["embed", f"checkpoint={run_dir}", str(tmp_path / "imgs"), f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and "broken.png" in printed
    assert "4 embeddings of dimension 48" in printed
    z = np.load(out)
    assert list(z["paths"]) == files and z["embeddings"].shape == (4, 48)
    # the backbone's pre-logits, the features idmm's evaluations use
    model = idmm.load_model(run_dir)
    _, _, batches = preprocessed(model, files)
    ((_, x),) = list(batches)
    with torch.no_grad():
        want = model.forward_head(model.forward_features(x), pre_logits=True)
    assert np.allclose(z["embeddings"], want.numpy(), atol=1e-5)
    csv_out = tmp_path / "emb.csv"
    assert main(["embed", f"checkpoint={run_dir}", files[0], f"out={csv_out}"]) == 0
    header, row = csv_out.read_text().splitlines()
    assert header.startswith("path,e0,") and row.startswith(files[0])
    assert main(["embed", f"checkpoint={run_dir}", files[0], f"out={tmp_path / 'x.txt'}"]) == 2
