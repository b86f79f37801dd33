"""`idmm analyze`: embeddings, alignment/uniformity (also over snapshots), instance-head
structure and gradient coverage, on real digits with a tiny model; the maths on known cases."""

from __future__ import annotations

import json

import pytest
import torch

from idmm import cli
from idmm.analysis import alignment_uniformity, head_structure
from idmm.config import AugConfig
from idmm.engine.distributed import setup

TINY = ["data=sklearn-digits", "model=vit_test", "batch_size=64", "threads=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    pre, scratch = root / "idmm", root / "scratch"
    assert cli.main(["pretrain", *TINY, "epochs=2", "snapshot_every=1",
                     "idmm.head_init=imprint", f"out={pre}"]) == 0  # fmt: skip
    assert cli.main(["finetune", *TINY, "finetune.epochs=1", f"out={scratch}"]) == 0
    return pre, scratch


def test_analyze_writes_every_analysis(runs, tmp_path, capsys):
    pre, scratch = runs
    out = tmp_path / "analysis"
    args = ["analyze", str(pre), str(scratch), f"out={out}", "points=200", "coverage_steps=3"]
    assert cli.main(args) == 0
    assert "idmm: alignment" in capsys.readouterr().out
    result = json.loads((out / "analysis.json").read_text())
    a, s = result["idmm"], result["scratch"]
    assert a["kind"] == "backbone" and s["kind"] == "classifier"  # the scratch pre-logits
    assert a["method"] == "idmm" and s["method"] == "scratch"
    for r in (a, s):
        assert len(r["embedding"]) == len(r["labels"]) == 200 and len(r["embedding"][0]) == 2
        assert 0 <= r["final"]["alignment"] <= 4 and r["final"]["uniformity"] <= 0
    assert [e["epoch"] for e in a["over_epochs"]] == [1, 2]  # one per snapshot
    assert a["over_epochs"][-1]["alignment"] == pytest.approx(a["final"]["alignment"])
    head = a["head"]
    assert head["rows"] == 1297 and 0 <= head["nn_same_class"] <= 1
    cov = a["gradient_coverage"]
    # without smoothing only the batch's own rows have a target (CutMix mixes within the
    # batch); with smoothing every row gets 384 crops x 0.1 / 1297 = 0.030 >= 0.01
    assert cov["neither"]["rows_with_target"] == pytest.approx(64 / 1297)
    assert cov["cutmix only"]["rows_with_target"] == pytest.approx(64 / 1297)
    assert cov["smoothing only"]["rows_with_target"] == 1.0
    assert cov["cutmix+smoothing"]["rows_pulled"] <= cov["cutmix+smoothing"]["rows_with_target"]
    assert "gradient_coverage" not in s and "head" not in s
    for name in ("embedding", "alignment_uniformity", "head_gradient_coverage"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000


def test_analyze_rejects_unknown_settings_and_missing_runs(tmp_path, capsys):
    assert cli.main(["analyze", str(tmp_path), "colour=red"]) == 2
    assert "colour" in capsys.readouterr().err
    assert cli.main(["analyze", str(tmp_path)]) == 2
    assert "not an idmm run directory" in capsys.readouterr().err


def test_head_structure_of_class_prototypes():
    torch.manual_seed(0)
    protos = torch.randn(4, 32)
    labels = torch.arange(40) % 4
    rows = protos[labels] + 0.1 * torch.randn(40, 32)
    h = head_structure(rows, labels)
    assert h["nn_same_class"] == 1.0 and h["chance_same_class"] == pytest.approx(0.25)
    assert h["within_class_cos"] > 0.9 > h["between_class_cos"]
    shuffled = head_structure(torch.randn(40, 32), labels)
    assert shuffled["within_class_cos"] == pytest.approx(shuffled["between_class_cos"], abs=0.1)


def test_alignment_and_uniformity_of_known_maps():
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    rt = setup("cpu", "fp32")
    aug = AugConfig()

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], 8)

    c = alignment_uniformity(Constant(), images, 16, [0.5] * 3, [0.25] * 3, aug, rt)
    # one point: the two views agree perfectly and nothing is spread out (log e^0 = 0)
    assert c["alignment"] == pytest.approx(0.0) and c["uniformity"] == pytest.approx(0.0)
    flat = torch.nn.Flatten()
    r = alignment_uniformity(flat, images, 16, [0.5] * 3, [0.25] * 3, aug, rt)
    assert r["alignment"] > 0 and r["uniformity"] < 0 and r["images"] == 64
