"""The benchmark scripts measure what they claim: the conventional reference loop does the same
work as idmm's step (same model, crops and FLOPs), and the accuracy references are real."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import accuracy  # noqa: E402
import throughput  # noqa: E402
from idmm_loop import IdmmLoop  # noqa: E402
from peak import matmul_peak  # noqa: E402
from reference_loop import ReferenceLoop  # noqa: E402

from idmm.data.sources import open_source  # noqa: E402

needs_fmnist = pytest.mark.skipif(
    open_source("fashion-mnist") is None, reason="Fashion-MNIST is not installed"
)


@needs_fmnist
def test_reference_and_idmm_steps_do_the_same_work(tmp_path):
    folder = throughput.write_images(tmp_path, 28, per_class=4)
    assert len(list(folder.rglob("*.png"))) == 40
    case = dict(model="vit_test", size=16, local=8, batch=8, stored=28)
    ref, ours = ReferenceLoop(case, str(folder)), IdmmLoop(case, str(folder))
    a, b = ref.info(), ours.info()
    assert a["crops_per_image"] == b["crops_per_image"] == 6
    assert a["params_m"] == b["params_m"]
    # the same model on the same crops: FLOPs agree (attention kernels are counted slightly
    # differently by the fused and the plain path)
    assert a["step_gflop"] > 0 and abs(a["step_gflop"] - b["step_gflop"]) / b["step_gflop"] < 0.05
    for loop in (ref, ours):
        times = loop.run(2)
        assert len(times) == 2 and all(d >= 0 and m > 0 for d, m in times)
        assert loop.final()["peak_rss_mb"] > 100  # the process (and its workers) measured


def test_summary_and_mfu_arithmetic():
    times = [(0.1, 0.4), (0.2, 0.3), (0.1, 0.5)]
    info = {"crops_per_image": 6, "step_gflop": 10.0, "precision": "bf16"}
    s = throughput.summarise(times, 64, info, {"peak_rss_mb": 1})
    assert s["step_s"] == 0.5 and s["source_images_per_s"] == 128.0 and s["crops_per_s"] == 768.0
    assert s["achieved_gflops"] == 20.0
    r = {k: dict(s) for k in throughput.PIPELINES}
    throughput.add_mfu(r, {"fp32": 40.0, "bf16": 80.0})
    assert r["idmm_fp32"]["mfu"] == 0.25  # each against the peak of its own precision


def test_only_the_precisions_the_cpu_has_are_timed(monkeypatch):
    import idmm.engine.distributed as dist

    for has, expected in (
        (False, ("reference", "idmm_fp32")),
        (True, ("reference", "idmm_fp32", "reference_bf16", "idmm_bf16")),
    ):
        monkeypatch.setattr(dist, "cpu_has_bf16", lambda has=has: has)
        assert throughput.pipelines() == expected


def test_matmul_peak_is_measured():
    peaks = matmul_peak(sizes=(128,), repeats=2)
    assert set(peaks) == {"fp32", "bf16"} and all(v > 0 for v in peaks.values())
    assert set(matmul_peak(sizes=(128,), repeats=1, precisions=("fp32",))) == {"fp32"}


def test_raw_pixel_references_on_digits():
    refs = accuracy.raw_pixel_references(str(accuracy.ROOT / "configs/cpu/fmnist2040.yaml"),
                                         "sklearn-digits")  # fmt: skip
    assert refs["train_images"] == 1297 and refs["test_images"] == 355
    assert 0.9 < refs["knn_raw_pixels"] <= 1.0 and 0.9 < refs["logreg_raw_pixels"] <= 1.0


def test_accuracy_table_has_intervals_differences_and_references():
    from idmm.commands.compare import summarise

    def row(method, ft):
        return {"method": method, "pretrain_epochs": 60, "finetune_epochs": 30, "knn_top1": None,
                "linear_top1": 0.5, "finetune_val_top1": ft, "finetune_top1": ft,
                "minutes": 2.0}  # fmt: skip

    per_seed = {s: {"idmm": row("IDMM", 0.7 + 0.1 * s), "scratch": row("scratch", 0.6 + 0.1 * s)}
                for s in range(3)}  # fmt: skip
    summary = summarise(per_seed, "idmm")
    ft = summary["idmm"]["finetune_top1"]
    assert ft["mean"] == pytest.approx(0.8) and ft["std"] == pytest.approx(0.1) and ft["n"] == 3
    assert summary["idmm"]["knn_top1"] is None and summary["idmm"]["epochs"] == "60 + 30"
    table = accuracy.markdown(summary, {"knn_raw_pixels": 0.5, "logreg_raw_pixels": 0.6}, 3)
    assert "| IDMM | 60 + 30 | 3 |" in table and "80.00 ± 10.00" in table
    assert "-10.00 [-10.00, -10.00], p 0.000" in table  # scratch: 10 points below on every seed
    assert "| 60.00 |" in table


def test_minutes_plot_draws_each_method_against_budgets(tmp_path):
    import minutes

    def entry(name, means):
        return {m: {"method": name, "finetune_top1": {"mean": v, "ci95": [v - 0.01, v + 0.01]}}
                for m, v in means.items()}  # fmt: skip

    idmm, cnn = entry("IDMM", {5: 0.80, 10: 0.84}), entry("CNN", {5: 0.82, 10: 0.85})
    by_budget = {m: {"idmm": idmm[m], "cnn": cnn[m]} for m in (5, 10)}
    out = minutes.plot(by_budget, tmp_path / "m.png", "demo")
    assert (tmp_path / "m.png").read_bytes().startswith(b"\x89PNG")
    assert out == ["idmm", "cnn"]  # the names drawn, in order


def test_minutes_plot_from_earlier_results_keeps_the_entries_every_budget_has(tmp_path, capsys):
    import minutes

    def result(minutes_, names):
        rows = {n: {"method": n.upper(), "finetune_top1": {"mean": 0.8, "ci95": None}}
                for n in names}  # fmt: skip
        return {"data": "sklearn-digits", "budgets": {str(minutes_): rows}}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(result(5, ["idmm", "cnn", "dino"])))  # dino only at 5 minutes
    b.write_text(json.dumps(result(10, ["idmm", "cnn"])))
    assert minutes.plot_results([a, b], tmp_path / "m.png") == ["idmm", "cnn"]
    assert (tmp_path / "m.png").read_bytes().startswith(b"\x89PNG")
    # more entries of a budget from a later file join that budget
    later = tmp_path / "later.json"
    later.write_text(json.dumps(result(10, ["dino"])))
    assert minutes.plot_results([a, b, later], tmp_path / "m.png") == ["idmm", "cnn", "dino"]
    # a later file's entry replaces an earlier one's at the same budget (a rerun), and says so
    rerun = tmp_path / "rerun.json"
    rerun.write_text(json.dumps(result(10, ["idmm"])).replace("0.8", "0.9"))
    by_budget, data = minutes.merge_results([a, b, rerun])
    assert data == "sklearn-digits" and sorted(by_budget[10]) == ["cnn", "idmm"]
    assert by_budget[10]["idmm"]["finetune_top1"]["mean"] == 0.9
    assert by_budget[10]["cnn"]["finetune_top1"]["mean"] == 0.8
    assert "replaces idmm at 10 minutes" in capsys.readouterr().err
    c = tmp_path / "c.json"
    c.write_text(json.dumps({**result(20, ["idmm"]), "data": "fmnist-2040"}))
    with pytest.raises(SystemExit, match="one dataset"):
        minutes.plot_results([a, c], tmp_path / "m.png")


def test_minutes_pool_joins_seeds_run_at_other_times_and_pairs_them(tmp_path, capsys):
    import minutes

    def row(name, ft):
        return {"method": name.upper(), "pretrain_epochs": 10, "finetune_epochs": 5,
                "knn_top1": None, "linear_top1": None, "finetune_val_top1": ft,
                "finetune_top1": ft, "minutes": 20.0}  # fmt: skip

    # seeds 0 and 1 with their rows kept; seed 2 from an older file that kept only summaries
    kept = {"0": {"idmm": row("idmm", 0.80), "cnn": row("cnn", 0.70)},
            "1": {"idmm": row("idmm", 0.82), "cnn": row("cnn", 0.71)}}  # fmt: skip
    a = {"data": "clipart", "machine": {}, "budgets": {"20": {}}, "per_seed": {"20": kept}}
    b = {"data": "clipart", "machine": {}, "settings": {"seed": "2"}, "budgets": {"20": {
        n: {"method": n.upper(), "seeds": 1, "epochs": "9 + 4", "knn_top1": None,
            "linear_top1": None, "finetune_val_top1": {"values": [v]},
            "finetune_top1": {"values": [v]}, "minutes": {"values": [19.0]}}
        for n, v in (("idmm", 0.84), ("cnn", 0.72))}}}  # fmt: skip
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, result in zip(paths, (a, b)):
        path.write_text(json.dumps(result))
    by_budget, rows, data = minutes.pool_seeds(paths)
    assert data == "clipart" and sorted(rows[20]) == [0, 1, 2]
    idmm, cnn = by_budget[20]["idmm"], by_budget[20]["cnn"]
    assert idmm["seed_list"] == [0, 1, 2] and idmm["finetune_top1"]["mean"] == pytest.approx(0.82)
    diff = cnn["diff_vs_reference"]  # CNN - IDMM paired by seed: -0.10, -0.11, -0.12
    assert diff["mean"] == pytest.approx(-0.11) and diff["n"] == 3 and diff["significant"]
    # a rerun of one seed replaces that seed's row only, and says so
    rerun = tmp_path / "rerun.json"
    rerun.write_text(json.dumps({**a, "per_seed": {"20": {"1": {"idmm": row("idmm", 0.90)}}}}))
    by_budget, _, _ = minutes.pool_seeds([*paths, rerun])
    assert by_budget[20]["idmm"]["finetune_top1"]["values"] == pytest.approx([0.80, 0.90, 0.84])
    assert "replaces idmm of seed 1 at 20 minutes" in capsys.readouterr().err
    out = tmp_path / "pooled.json"
    minutes.pooled_results(paths, out, tmp_path / "p.png")
    assert json.loads(out.read_text())["budgets"]["20"]["cnn"]["seeds"] == 3
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def test_finetune_levers_are_fine_tuning_settings_and_tabled_against_the_recipe():
    import finetune_levers

    from idmm import make_config
    from idmm.config import finetune_config

    recipe = str(finetune_levers.ROOT / "configs/cpu/fmnist2040.yaml")
    base = finetune_config(make_config(recipe))
    for name, lever in finetune_levers.LEVERS.items():
        cfg = finetune_config(make_config(recipe, **lever))
        keys = [k.removeprefix("finetune.") for k in lever]
        # each lever changes what it names, as a fine-tuning setting
        assert all(getattr(cfg, k) != getattr(base, k) for k in keys), name

    def row(val, test):
        return {"epochs": 30, "val_top1": val, "test_top1": test, "minutes": 1.5}

    rows = {"recipe": row(0.80, 0.82), "lr x2": row(0.825, 0.83)}
    text = finetune_levers.table(rows)
    assert "| lr x2 | 30 | 82.50 | +2.50 | 83.00 | 1.5 |" in text
    assert "| recipe | 30 | 80.00 |  | 82.00 | 1.5 |" in text
