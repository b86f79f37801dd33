"""The shape of the code: per-stage configs, the method registry, the run directory, no import
cycles."""

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

import idmm
from idmm.config import (
    FinetuneConfig,
    PretrainConfig,
    RunConfig,
    build_config,
    finetune_config,
    pretrain_config,
    run_config,
)
from idmm.methods import METHODS, method_settings
from idmm.rundir import RunDir

SRC = Path(idmm.__file__).parent
TINY = dict(data="fashion-mnist", subset_per_class=10, model="vit_test", batch_size=25,
            threads=2, progress="log", **{"aug.local_size": 16, "linear.epochs": 5})  # fmt: skip


def _imports(path: Path, module: str) -> set[str]:
    """idmm modules that `module` imports at its top level."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.ImportFrom):
            continue
        target = node.module or ""
        if node.level:
            parts = package.split(".")
            target = ".".join(parts[: len(parts) - node.level + 1] + ([target] if target else []))
        found |= {f"{target}.{a.name}" for a in node.names}
        if node.module:  # `from . import x` imports x, not the package being initialised
            found.add(target)
    return {m for m in found if m.startswith("idmm")}


def test_no_import_cycles():
    modules = {}
    for p in SRC.rglob("*.py"):
        name = ".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = p
    graph = {m: {d for d in _imports(p, m) if d in modules and d != m} for m, p in modules.items()}

    def visit(m, path):
        assert m not in path, " -> ".join([*path, m])
        for d in graph[m]:
            visit(d, [*path, m])

    for m in graph:
        visit(m, [])


def test_every_registered_method_brings_its_settings_section():
    keys = {f.name for f in dataclasses.fields(PretrainConfig)}
    for section, settings in method_settings().items():
        assert section in keys and isinstance(getattr(PretrainConfig(), section), settings)
    for name, cls in METHODS.items():
        assert cls.name == name and cls.display_name
    # nothing but the registry names the methods: no module dispatches on a method's name
    for p in SRC.rglob("*.py"):
        if "methods" in p.parts:
            continue
        text = p.read_text()
        for name in METHODS:
            assert f'== "{name}"' not in text and f"== '{name}'" not in text, (p, name)


def test_stage_configs_cut_from_a_recipe_and_put_back():
    recipe = Path(__file__).parents[1] / "configs" / "cpu" / "fmnist2040.yaml"
    cfg = build_config(recipe)
    pre, ft = pretrain_config(cfg), finetune_config(cfg)
    assert isinstance(pre, PretrainConfig) and not isinstance(pre, RunConfig)
    assert pre.epochs == 60 and not hasattr(pre, "finetune")
    assert isinstance(ft, FinetuneConfig) and ft.epochs == 30 and ft.img_size == 28
    assert ft.head_init == "probe" and ft.data.subset_per_class == 204
    assert run_config(pre, ft) == cfg


def test_each_run_directory_records_what_ran(tmp_path):
    pre = tmp_path / "pre"
    idmm.pretrain(out=str(pre), epochs=1, **TINY, **{"finetune.epochs": 7})
    saved = yaml.safe_load((pre / "config.yaml").read_text())
    assert saved["epochs"] == 1 and "finetune" not in saved and "baseline" not in saved
    assert RunDir(pre).kind == "pretrain"
    ft = tmp_path / "ft"
    ft_keys = {k: v for k, v in TINY.items() if not k.startswith("aug.")}
    idmm.finetune(init=str(pre), out=str(ft), epochs=2, eval_every=1, **ft_keys)
    saved = yaml.safe_load((ft / "config.yaml").read_text())
    # the fine-tuning's own values at the top level, not the pre-training's
    assert saved["epochs"] == 2 and saved["eval_every"] == 1 and saved["init"] == str(pre)
    assert saved["lr"] == pytest.approx(5e-4 * 25 / 256) and saved["min_lr"] == 1e-6
    assert "method" not in saved and "aug" not in saved and "finetune" not in saved
    assert RunDir(ft).kind == "finetune"
    assert RunDir(ft).classifier_weights() == ft / "model.safetensors"
    with pytest.raises(idmm.ConfigError, match="fine-tuning run"):
        RunDir(ft).backbone_weights()
    assert RunDir.find(pre / "checkpoints" / "last.ckpt").path == pre
    # a pre-training key given to fine-tuning would be dropped silently: it is an error
    for key in ("knn_every", "aug.local_crops", "supervised.label_smoothing"):
        with pytest.raises(idmm.ConfigError, match="pre-training key"):
            idmm.finetune(init=str(pre), out=str(tmp_path / "x"), **{key: 1})


@pytest.mark.parametrize(
    "argv", [["--help"], *[[verb, "--help"] for verb in ("pretrain", "compare", "ablate", "eval")]]
)
def test_help_prints(argv, capsys):
    from idmm import cli

    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0 and "usage: idmm" in capsys.readouterr().out


def test_run_directory_logs_csv_tensorboard_and_provenance(tmp_path):
    import csv
    import json

    run = tmp_path / "pre"
    idmm.pretrain(out=str(run), epochs=2, knn_every=1, **TINY)
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[1]["knn_top1_val"]) >= 0
    record = json.loads((run / "provenance.json").read_text())["invocations"]
    assert len(record) == 1 and record[0]["versions"]["torch"] and record[0]["cpu"]
    assert "command" in record[0] and "bf16_cpu" in record[0]
    pytest.importorskip("tensorboard")  # the dev extra installs it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2]
    idmm.pretrain(out=str(run), epochs=3, resume=True, **TINY)  # a second invocation
    assert len(json.loads((run / "provenance.json").read_text())["invocations"]) == 2
    assert [r["epoch"] for r in csv.DictReader((run / "metrics.csv").open())] == ["1", "2", "3"]


def test_the_cli_starts_without_importing_torch():
    """`idmm --help` and a typo answer at once: torch and timm load only when a verb runs."""
    import subprocess
    import sys

    code = "import sys, idmm, idmm.cli; print(sorted({'torch', 'timm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
