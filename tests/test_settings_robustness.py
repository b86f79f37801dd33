"""Bad settings: no `key=value` input makes the CLI print a traceback (property-based, with
hypothesis), every rejection names the key, and impossible combinations fail before training."""

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import idmm
from idmm import cli
from idmm.commands import pretrain as pretrain_command
from idmm.config import ALIASES, CHOICES, ConfigError, all_keys, build_config, parse_overrides

KEYS = all_keys() + list(ALIASES)
VALUES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "none", "true", "1e-3", "-5", "0", "nan", "inf", "1,2", "[1, 2]",
                     "{a: 1}", "auto", "bf16", "3.5", "1e999", "- x", "!!python/object:os.system"]),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)  # fmt: skip
NAMES = st.one_of(st.sampled_from(KEYS), st.text(string.ascii_letters + "._", max_size=15))


class _Stop(Exception):
    """Raised where training would start: the settings were accepted."""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(NAMES, VALUES), max_size=3))
def test_any_settings_are_accepted_or_rejected_naming_the_key(pairs):
    args = [f"{k}={v}" for k, v in pairs]
    try:
        build_config(overrides=parse_overrides(args))
    except ConfigError as e:
        message = str(e)
        named = [k for k, _ in pairs if k.strip() in message or ALIASES.get(k.strip(), "@") in
                 message]  # fmt: skip
        assert named or "key=value" in message or "must be" in message, message
        for key, choices in CHOICES.items():
            if f"'{key}' must be one of" in message:
                assert all(c in message for c in choices)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.lists(st.tuples(NAMES, VALUES), max_size=3))
def test_the_cli_never_prints_a_traceback(monkeypatch, capsys, pairs):
    def stop(cfg):
        raise _Stop

    monkeypatch.setattr(pretrain_command, "start_run", stop)
    args = [f"{k}={v}" for k, v in pairs if k.strip() not in ("out", "resume", "overwrite")]
    try:
        code = cli.main(["pretrain", *args])
    except _Stop:
        return
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("idmm: error: ") and "Traceback" not in err


def _fails_before_training(tmp_path, capsys, *args) -> str:
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    before = metrics.read_text() if metrics.exists() else None
    code = cli.main(["pretrain", "data=fashion-mnist", "subset_per_class=4", "model=vit_test",
                     "img_size=16", "epochs=1", "batch_size=8", "progress=log", f"out={out}",
                     *args])  # fmt: skip
    assert code == 2 and (metrics.read_text() if metrics.exists() else None) == before
    return capsys.readouterr().err


@pytest.mark.parametrize("args,says", [
    (["batch_size=64"], "batch_size=64 x 1 process(es) is larger than the 30 training images; "
                        "set batch_size<=30"),
    (["epochs=0"], "'epochs' must be at least 1"),
    (["model=vit_tiny_patch17"], "unknown model 'vit_tiny_patch17'"),
    (["img_size=18"], "img_size=18 is not a multiple of vit_test's patch size 4; use 16 or 20"),
    (["aug.local_size=10"], "aug.local_size=10 is not a multiple"),
    (["method=byol"], "unknown method 'byol'"),
    (["data=/no/such/folder"], "/no/such/folder does not exist"),
])  # fmt: skip
def test_impossible_settings_fail_before_training(tmp_path, capsys, args, says):
    assert says in _fails_before_training(tmp_path, capsys, *args)


def test_resume_with_another_model_fails_before_training(tmp_path, capsys):
    idmm.pretrain(data="fashion-mnist", subset_per_class=4, model="vit_test", img_size=16,
                  epochs=1, batch_size=8, progress="log", out=str(tmp_path / "run"))  # fmt: skip
    err = _fails_before_training(tmp_path, capsys, "resume=true", "model=vit_cpu_small")
    assert "trained with model='vit_test'" in err and "use the same model or another out=" in err


def test_resume_with_nothing_to_resume_is_refused(tmp_path, capsys):
    """A mistyped out= with resume=true used to train from scratch after one info line."""
    err = _fails_before_training(tmp_path, capsys, "resume=true")
    assert "resume=true: nothing to resume at" in err and "check out=" in err
    assert not (tmp_path / "run").exists()


def test_a_yaml_recipe_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "evil.yaml"
    recipe.write_text('epochs: !!python/object/apply:os.system ["touch PWNED"]\n')
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(recipe)
    assert not (tmp_path / "PWNED").exists()


def test_unwritable_outputs_and_bad_command_values_are_one_line_errors(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    run = tmp_path / "run"  # a run directory as far as `report` reads one
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 1\n")
    cases = [
        (["pretrain", f"out={a_file / 'run'}"], "is a file, not a directory"),
        (["report", str(run), f"out={tmp_path}"], "is a directory; give a file name"),
        (["predict", f"checkpoint={run}", str(a_file), "--top-k", "0"], "--top-k 0"),
        (["analyze", str(run), "points=abc"], "points=abc: give a whole number"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("idmm: error: ") and message in err and "Traceback" not in err


def test_a_failed_command_leaves_no_empty_run_directory(tmp_path, capsys):
    """It fails before its first checkpoint: the directory it created goes; in a directory that
    already held something, the error reaches train.log."""
    out = tmp_path / "new"
    args = ["pretrain", "data=fashion-mnist", "subset_per_class=10", "model=vit_test",
            "batch_size=5000", "threads=1", "progress=log"]  # fmt: skip
    assert cli.main([*args, f"out={out}"]) == 2
    assert "batch_size=5000" in capsys.readouterr().err and not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert cli.main([*args, f"out={kept}"]) == 2
    assert "error: batch_size=5000" in (kept / "train.log").read_text()
