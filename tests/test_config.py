from pathlib import Path

import pytest

from idmm.config import ConfigError, build_config, parse_overrides, set_key


def test_documented_keys_work():
    cfg = build_config(
        overrides=parse_overrides(
            [
                "data=some/folder",
                "out=runs/x",
                "method=idmm",
                "model=vit_cpu",
                "img_size=28",
                "epochs=3",
                "batch_size=64",
                "lr=0.001",
                "seed=7",
                "subset_per_class=204",
                "resume=true",
                "aug.local_size=16",
                "aug.global_scale=0.2,1",
                "idmm.label_smoothing=0",
                "clip_grad=none",
                "base_lr=1e-3",
                "min_lr=5E-6",
            ]
        )
    )
    assert cfg.data.source == "some/folder" and cfg.data.subset_per_class == 204
    assert cfg.epochs == 3 and cfg.lr == 0.001 and cfg.resume is True and cfg.seed == 7
    assert cfg.aug.global_scale == (0.2, 1.0) and cfg.aug.local_size == 16
    assert cfg.idmm.label_smoothing == 0.0 and cfg.clip_grad is None
    assert cfg.base_lr == 1e-3 and cfg.min_lr == 5e-6  # YAML 1.1 reads "1e-3" as a string


def test_unknown_key_names_it_and_hints():
    with pytest.raises(ConfigError, match="unknown config key 'epoch'.*Did you mean 'epochs'"):
        build_config(overrides={"epoch": "3"})
    with pytest.raises(ConfigError, match="aug.local_sise.*aug.local_size"):
        build_config(overrides={"aug.local_sise": "16"})


@pytest.mark.parametrize(
    "key,value,msg",
    [
        ("epochs", "ten", "'epochs' expects int"),
        ("epochs", "1.5", "'epochs' expects int"),
        ("lr", "fast", "'lr' expects float"),
        ("resume", "maybe", "'resume' expects bool"),
        ("precision", "fp8", "'precision' must be one of auto, fp32, bf16, fp16"),
        ("aug.global_scale", "0.1,0.5,0.9", "expects 2 values"),
        ("epochs", "0", "'epochs' must be at least 1"),
        ("idmm.label_smoothing", "1.5", "'idmm.label_smoothing' must be in"),
        ("lr", "nan", "'lr' must be a finite number"),
        ("threads", "0", "'threads' must be at least 1"),
        ("lr", "-1e-3", "'lr' must be positive"),
    ],
)
def test_bad_values_are_rejected_with_the_key(key, value, msg):
    with pytest.raises(ConfigError, match=msg):
        build_config(overrides={key: value})


def test_yaml_recipe_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 5\naug:\n  local_crops: 2\nidmm:\n  cutmix_alpha: 1.0\n")
    cfg = build_config(recipe, {"epochs": "7"})
    assert cfg.epochs == 7 and cfg.aug.local_crops == 2 and cfg.idmm.cutmix_alpha == 1.0
    recipe.write_text("aug:\n  local_crop: 2\n")
    with pytest.raises(ConfigError, match="aug.local_crop"):
        build_config(recipe)


def test_malformed_override():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(ConfigError, match="is a section"):
        set_key(build_config(), "aug", 3)


@pytest.mark.parametrize(
    "recipe", sorted(Path(__file__).parents[1].glob("configs/**/*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_recipe_is_valid(recipe):
    cfg = build_config(recipe)
    assert cfg.epochs >= 1 and cfg.data.source


def test_cli_lists_every_key_with_its_default(capsys):
    from idmm.cli import main

    assert main(["keys"]) == 0
    lines = [x.split()[0] for x in capsys.readouterr().out.splitlines() if "=" in x]
    assert "epochs=None" in lines and "idmm.head_init=random" in lines
    assert "aug.global_scale=[0.14," in lines  # the value goes on: [0.14, 1.0]


def test_recipes_are_addressable_by_name(capsys):
    """The recipes ship inside the package: `--config cpu/fmnist2040` works after pip install;
    a path still works (configs/ in a checkout links to them)."""
    from pathlib import Path

    from idmm import cli
    from idmm.config import recipes

    by_name = build_config("cpu/fmnist2040")
    by_path = build_config(Path(__file__).parents[1] / "configs" / "cpu" / "fmnist2040.yaml")
    assert by_name == by_path and by_name.model == "vit_cpu_small_conv"
    assert {"cpu/fmnist2040", "paper/flowers102_deit_tiny"} <= set(recipes())
    with pytest.raises(ConfigError, match="recipe name: cpu/fmnist2040"):
        build_config("cpu/fmnist2404")
    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(recipes()) and out[0].startswith("cpu/fmnist2040 ")


def test_a_recipe_on_another_dataset_leaves_its_dataset_keys():
    """`--config cpu/fmnist2040 data=FOLDER` must not keep FMNIST's 204-per-class subset
    silently: the dataset keys are left (and said so), the training settings kept."""
    import logging

    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("idmm").addHandler(handler)  # the idmm logger does not propagate
    try:
        cfg = build_config("cpu/fmnist2040", {"data": "some/folder"})
    finally:
        logging.getLogger("idmm").removeHandler(handler)
    assert cfg.data.subset_per_class is None and cfg.model == "vit_cpu_small_conv"
    assert cfg.epochs == 60 and cfg.finetune.head_init == "probe"
    assert any("data.subset_per_class=204 are not applied" in s for s in said)
    kept = build_config("cpu/fmnist2040", {"data": "some/folder", "subset_per_class": "5"})
    assert kept.data.subset_per_class == 5
    assert build_config("cpu/fmnist2040").data.subset_per_class == 204


def test_keys_lists_every_key_with_its_default_and_meaning(capsys):
    from idmm import cli
    from idmm.config import all_keys

    assert cli.main(["keys"]) == 0
    out = capsys.readouterr().out
    for key in all_keys():
        assert f"\n{key}=" in out, key
    assert "data.val_fraction=0.1" in out and "# of the training images held out" in out
    assert "[idmm]" in out and "idmm.head_init=random" in out


def test_every_key_has_a_type_and_a_description(capsys):
    from idmm.cli import main
    from idmm.config import all_keys, key_notes, key_types

    notes, types = key_notes(), key_types()
    assert [k for k in all_keys() if not notes.get(k)] == []
    assert types["budget"] == "str | auto" and types["aug.local_crops"] == "int"
    assert main(["keys", "aug."]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "=" in x]
    assert lines and all(x.startswith("aug.") and "(" in x and "#" in x for x in lines)
    assert main(["keys", "nosuch"]) == 2
    assert "no config key starts with 'nosuch'" in capsys.readouterr().err


def test_a_finetuning_runs_config_yaml_is_a_recipe(tmp_path):
    """`idmm finetune --config runs/ft/config.yaml` repeats that run: its flat fine-tuning keys
    are read as the recipe's `finetune:` section (they used to be unknown top-level keys)."""
    import yaml

    from idmm.config import finetune_config, to_dict

    run = build_config("cpu/fmnist2040", {"finetune.epochs": 7, "finetune.init": "runs/pre"})
    flat = to_dict(finetune_config(run))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(flat))
    again = build_config(path)
    assert again.finetune.epochs == 7 and again.finetune.init == "runs/pre"
    assert to_dict(finetune_config(again)) == flat
