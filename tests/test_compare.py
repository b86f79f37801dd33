"""`idmm compare` and `idmm transfer`: tables, plots, and reuse of finished runs."""

import csv
import json

import pytest

from idmm import cli, compare, transfer
from idmm.commands.transfer import transfer_table
from idmm.config import ConfigError

TINY = dict(model="vit_test", img_size=16, epochs=1, batch_size=16, progress="log",
            linear={"epochs": 5}, finetune={"epochs": 1, "batch_size": 16})  # fmt: skip


def test_compare_writes_its_table_and_chart(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "data=fashion-mnist", "subset_per_class=8", "methods=idmm,supcon,scratch",
            "model=vit_test", "img_size=16", "epochs=1", "batch_size=16", "finetune.epochs=1",
            "finetune.batch_size=16", "linear.epochs=5", f"out={out}", "progress=log"]  # fmt: skip
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "| IDMM | 1 + 1 |" in printed and "| scratch | 0 + 2 |" in printed
    rows = list(csv.DictReader((out / "compare.csv").read_text().splitlines()))
    assert [r["method"] for r in rows] == ["IDMM", "SupCon", "scratch"]
    for r in rows:
        assert 0 <= float(r["finetune_top1"]) <= 1
    assert rows[0]["knn_top1"] and rows[1]["linear_top1"] and not rows[2]["knn_top1"]
    assert (out / "plots" / "compare.png").stat().st_size > 0
    assert "| SupCon |" in (out / "compare.md").read_text()
    # each method is a complete `idmm run` directory with its own report
    assert "SupCon pre-training + fine-tuning" in (out / "supcon" / "report.md").read_text()


def test_compare_rejects_an_unknown_method(tmp_path):
    with pytest.raises(ConfigError, match="unknown simclrr.*choose from"):
        compare(methods="idmm,simclrr", out=str(tmp_path))


def test_transfer_matrix_reuses_finished_runs(tmp_path):
    out = tmp_path / "tr"
    common = dict(TINY, data="fashion-mnist", subset_per_class=8, out=str(out))
    first = transfer(sources="fashion-mnist,sklearn-digits", targets="sklearn-digits", **common)
    assert first["sources"] == ["fashion-mnist", "sklearn-digits"]
    assert len(first["top1"]) == 2 and len(first["top1"][0]) == 1
    ckpts = sorted((out / "pretrain").glob("*/checkpoints/last.ckpt"))
    ft_ckpt = out / "finetune" / "fashion-mnist-to-sklearn-digits" / "checkpoints" / "last.ckpt"
    stamps = {p: p.stat().st_mtime_ns for p in [*ckpts, ft_ckpt]}
    assert len(ckpts) == 2
    # a second call with one more target trains only the two new fine-tunings
    second = transfer(sources="fashion-mnist,sklearn-digits",
                      targets="sklearn-digits,fashion-mnist", **common)  # fmt: skip
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert [row[0] for row in second["top1"]] == [row[0] for row in first["top1"]]
    assert (out / "finetune" / "sklearn-digits-to-fashion-mnist" / "model.safetensors").is_file()
    table = list(csv.reader((out / "transfer.csv").read_text().splitlines()))
    assert table[0] == ["pretrain \\ finetune", "sklearn-digits", "fashion-mnist"]
    assert json.loads((out / "transfer.json").read_text())["targets"][1] == "fashion-mnist"
    assert (out / "plots" / "transfer.png").stat().st_size > 0
    # the fine-tuning on digits used digits, not Fashion-MNIST's subset
    ft = json.loads((out / "finetune" / "fashion-mnist-to-sklearn-digits" / "results.json")
                    .read_text())["finetune"]  # fmt: skip
    assert ft["train_images"] == 1297 and ft["test_images"] == 355


def test_transfer_over_seeds_pairs_each_cell_with_the_targets_own_pretraining(tmp_path):
    out = tmp_path / "tr"
    r = transfer(sources="sklearn-digits,fashion-mnist", targets="sklearn-digits", seeds=2,
                 data="fashion-mnist", subset_per_class=8, out=str(out), **TINY)  # fmt: skip
    assert r["seeds"] == 2 and list(r["per_seed"]) == ["0", "1"]
    assert (out / "seed_1" / "finetune" / "fashion-mnist-to-sklearn-digits").is_dir()
    cells = [m[1][0] for m in r["per_seed"].values()]
    assert r["top1"][1][0] == pytest.approx(sum(cells) / 2)
    own, other = r["vs_own"][0][0], r["vs_own"][1][0]
    assert own is None  # the target's own row
    digits = [m[0][0] for m in r["per_seed"].values()]
    assert other["mean"] == pytest.approx(sum(cells) / 2 - sum(digits) / 2)
    assert "p" in other and "Difference to the target's own" in transfer_table(r)
    assert "2 seed(s)" in (out / "transfer.md").read_text()


def test_transfer_needs_sources_and_targets(capsys):
    assert cli.main(["transfer", "sources=fashion-mnist"]) == 2
    assert "missing targets=" in capsys.readouterr().err


def test_compare_over_seeds_gives_intervals_and_paired_differences(tmp_path):
    """seeds=2: each seed trains with its own seed, subset draw and splits; the summary has a
    95% interval and the paired difference to the reference (idmm)."""
    out = tmp_path / "cmp"
    summary = compare(methods="idmm,idmm-paper,scratch", seeds=2, data="fashion-mnist",
                      subset_per_class=8, out=str(out), **TINY)  # fmt: skip
    assert list(summary) == ["idmm", "idmm-paper", "scratch"]
    for s in summary.values():
        assert s["seeds"] == 2 and len(s["finetune_top1"]["values"]) == 2
        assert s["finetune_top1"]["ci95"] is not None
    assert "diff_vs_reference" not in summary["idmm"]
    d = summary["scratch"]["diff_vs_reference"]
    idmm_v, scratch_v = summary["idmm"]["finetune_top1"]["values"], summary["scratch"][
        "finetune_top1"]["values"]  # fmt: skip
    assert d["mean"] == pytest.approx(sum(s - i for s, i in zip(scratch_v, idmm_v)) / 2)
    splits = [json.loads((out / f"seed_{s}" / "idmm" / "splits.json").read_text())["items"]
              for s in (0, 1)]  # fmt: skip
    assert splits[0]["train"] != splits[1]["train"]  # its own subset draw per seed
    paper = yaml_config(out / "seed_0" / "idmm-paper" / "pretrain" / "config.yaml")
    assert paper["idmm"]["head_init"] == "random" and paper["aug"]["local_scale"] == [0.05, 0.4]
    assert paper["aug"]["color_jitter"] == [0.8, 0.8, 0.8, 0.2]
    table = (out / "compare.md").read_text()
    assert "| IDMM (paper-faithful) |" in table and "95% interval" in table
    rows = list(csv.DictReader((out / "compare.csv").read_text().splitlines()))
    assert [r["seed"] for r in rows] == ["0", "0", "0", "1", "1", "1"]


def test_ablate_runs_the_papers_steps(tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["ablate", "data=fashion-mnist", "subset_per_class=8", "model=vit_test", "img_size=16",
            "finetune.img_size=28", "epochs=1", "batch_size=16", "finetune.epochs=1",
            "finetune.batch_size=16", "linear.epochs=5", f"out={out}", "progress=log"]  # fmt: skip
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "| + CutMix (= IDMM, paper-faithful) | 1 |" in printed and "| 79.9 |" in printed
    assert "| fine-tune val top-1 (%) | fine-tune test top-1 (%) |" in printed
    plain = yaml_config(out / "ablate-plain" / "pretrain" / "config.yaml")
    assert plain["img_size"] == 28 and plain["aug"]["local_crops"] == 0  # full size, 2 crops
    assert plain["idmm"]["label_smoothing"] == 0 and plain["idmm"]["cutmix_alpha"] == 0
    small = yaml_config(out / "ablate+smallres" / "pretrain" / "config.yaml")
    assert small["img_size"] == 16 and small["idmm"]["label_smoothing"] == 0.1
    assert (out / "ablation.md").is_file()


def yaml_config(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_every_variant_sets_valid_keys_on_the_cpu_recipe():
    """Each named entry (paper-faithful, ablation steps, levers) is a method plus overrides
    that the recipe's config accepts: a typo in a variant fails here, not hours into a run."""
    from idmm.builders import make_config
    from idmm.commands.variants import LEVERS, VARIANTS
    from idmm.config import set_key, validate
    from idmm.methods import METHODS
    from idmm.models import PRESETS

    cfg = make_config("cpu/fmnist2040")
    assert set(LEVERS) <= set(VARIANTS)
    for name, v in VARIANTS.items():
        assert v.method in (*METHODS, "scratch"), name
        c = make_config("cpu/fmnist2040", method=v.method if v.method != "scratch" else "idmm")
        for key, value in v.overrides(cfg).items():
            set_key(c, key, value)
        validate(c)
        assert c.model in PRESETS, f"{name}: {c.model} is not a preset"
