"""`idmm report`: one self-contained HTML page, rendered by headless Chromium without errors."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess

import pytest

from idmm import cli

TINY = ["data=sklearn-digits", "model=vit_test", "batch_size=64", "threads=1"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI installs Debian's chromium and sets this, so the browser test can never be skipped there
REQUIRED = os.environ.get("IDMM_REQUIRE_CHROMIUM") == "1"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run, scratch = root / "run", root / "scratch"
    assert cli.main(["run", *TINY, "epochs=2", "finetune.epochs=1", f"out={run}"]) == 0
    assert cli.main(["finetune", *TINY, "finetune.epochs=2", "lr=2e-3", f"out={scratch}"]) == 0
    assert cli.main(["analyze", str(run), "points=100", "coverage_steps=1"]) == 0
    out = root / "report.html"
    assert cli.main(["report", str(run), str(scratch), f"out={out}"]) == 0
    return out


def test_report_is_self_contained_and_complete(page):
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    for section in ("Settings that differ", "Accuracy", "Training curves", "Confusion matrices",
                    "Analyses"):  # fmt: skip
        assert f"<h2>{section}</h2>" in text
    assert "<td>finetune.epochs</td>" in text  # 1 vs 2: a setting that differs
    assert "<td>scratch</td>" in text  # the run without pre-training is named as such
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    # curves, 2 confusion matrices, 3 analysis plots
    assert len(images) >= 6
    assert all(base64.b64decode(b).startswith(b"\x89PNG\r\n\x1a\n") for b in images)


def test_report_lines_fine_tuning_up_after_pre_training_and_has_the_scratch_column(page):
    from idmm.commands.report import load_run

    run = load_run(page.parent / "run")
    pre, ft = run["metrics"]["run IDMM pre-training"], run["metrics"]["run fine-tuning"]
    assert [r["epoch"] for r in pre if "epoch" in r] == [1, 2]
    assert [r["epoch"] for r in ft if "epoch" in r] == [3]  # 2 pre-training epochs before it
    assert run["supervised"] == {"run fine-tuning", "run supervised from scratch"}
    assert "<th>scratch top-1</th>" in page.read_text()


@pytest.mark.skipif(not CHROMIUM and not REQUIRED, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(page, tmp_path):
    assert CHROMIUM, "IDMM_REQUIRE_CHROMIUM=1 but chromium is not installed (apt install chromium)"
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--enable-logging=stderr", "--v=0", profile, "--dump-dom", page.as_uri()]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert dom.count("<table") >= 2 and dom.count("<img") >= 6
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    assert "Not allowed to load" not in r.stderr and "ERR_FILE_NOT_FOUND" not in r.stderr
