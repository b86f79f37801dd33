"""`idmm report RUN_DIR ... out=report.html`: one self-contained HTML page comparing runs.

The settings that differ between the runs, the accuracy table, training curves, confusion
matrices, and, when present, the `idmm analyze` plots and a transfer heatmap. Every image is
embedded as a data: URI and there is no script or external resource, so the page opens from disk
in any browser, offline.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .. import plots
from ..config import ConfigError, load_yaml
from ..methods import display_name
from ..rundir import RunDir, check_out
from .run import stage_curves

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; font-size: 14px; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; max-width: 48%; }
figure.wide { max-width: 100%; }
figcaption { font-size: 13px; color: #555; }
"""


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        flat.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return flat


def load_run(path: Path) -> dict:
    """What the report needs of a run: config, results, metrics per stage, and its PNGs."""
    rd = RunDir(path).require()
    run = rd.path
    config = _flatten(load_yaml(rd.config_file))
    metrics, supervised = {}, set()
    if rd.kind == "run":  # fine-tuning on the epochs after pre-training, as in report.md
        staged, supervised = stage_curves(rd, int(config.get("epochs", 0)),
                                          display_name(config.get("method", "idmm")),
                                          prefix=f"{run.name} ")  # fmt: skip
        metrics = {k: v for k, v in staged.items() if v}
    elif rd.metrics():
        metrics[f"{run.name} train"] = rd.metrics()
        if rd.kind == "finetune":
            supervised = {f"{run.name} train"}
    results = rd.results()
    if rd.kind == "finetune":  # a classifier without pre-training in this directory
        config["method"] = "fine-tune" if config.get("init") else "scratch"
    return {
        "name": run.name,
        "config": config,
        "results": results,
        "metrics": metrics,
        "supervised": supervised,
        "confusion": sorted(run.glob("**/plots/confusion*.png")),
        "analysis": sorted(run.glob("analysis/plots/*.png")),
        "transfer": sorted(run.glob("plots/transfer.png")),
    }


def differing_settings(runs: list[dict]) -> dict[str, list]:
    keys = sorted({k for r in runs for k in r["config"]})
    out = {}
    for k in keys:
        if k == "out" or k == "init" or k.endswith(".init"):
            continue  # where a run lives says nothing about how it was trained
        values = [r["config"].get(k) for r in runs]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            out[k] = values
    return out


def accuracy_row(r: dict) -> dict[str, Any]:
    res = r["results"]
    ft = res.get("finetune", {})
    minutes = (res.get("pretrain", {}).get("time_s") or 0) + (ft.get("time_s") or 0)
    return {
        "run": r["name"],
        "method": res.get("method") or r["config"].get("method"),
        "model": r["config"].get("model"),
        "kNN top-1": res.get("knn", {}).get("top1"),
        "linear top-1": res.get("linear", {}).get("top1"),
        "fine-tune top-1": ft.get("top1"),
        "fine-tune val top-1": ft.get("val_top1"),
        "top-5": ft.get("top5"),
        "scratch top-1": res.get("scratch", {}).get("top1"),
        "minutes": minutes / 60 if minutes else None,
    }


def _cell(v: Any, key: str) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and ("top" in key):
        return f"{100 * v:.2f}%"
    if isinstance(v, float):
        return f"{v:.3g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v, h)}</td>" for h, v in zip(header, row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, caption: str, wide: bool = False) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cls = ' class="wide"' if wide else ""
    return (f'<figure{cls}><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip


def report(paths: list[str | Path], out: str | Path = "report.html") -> Path:
    """Write the comparison page to `out`; returns its path. `paths` are run directories, and
    optionally `idmm analyze` output folders (analysis.json) and `idmm transfer` folders
    (transfer.json), whose plots are added."""
    dirs = [Path(p) for p in paths]
    extra = {
        "Analyses": [p for p in dirs if (p / "analysis.json").is_file()],
        "Transfer": [p for p in dirs if (p / "transfer.json").is_file()],
    }
    runs = [p for p in dirs if p not in extra["Analyses"] + extra["Transfer"]]
    if not runs:
        raise ConfigError("idmm report needs at least one run directory (with config.yaml)")
    loaded = [load_run(r) for r in runs]
    out = check_out(Path(out), file="report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>idmm report: {len(loaded)} run(s)</h1>"]
    diff = differing_settings(loaded)
    parts.append("<h2>Settings that differ</h2>")
    if diff:
        rows = [[k, *v] for k, v in diff.items()]
        parts.append(_table(["key", *[r["name"] for r in loaded]], rows))
    else:
        parts.append("<p>The runs have the same settings.</p>")
    parts.append("<h2>Accuracy</h2>")
    acc = [accuracy_row(r) for r in loaded]
    parts.append(_table(list(acc[0]), [list(a.values()) for a in acc]))
    parts.append("<h2>Training curves</h2>")
    curves = out.parent / f".{out.stem}_curves.png"
    series = {label: m for r in loaded for label, m in r["metrics"].items()}
    supervised = {label for r in loaded for label in r["supervised"]}
    if series:
        plots.plot_curves(series, curves, title="loss and accuracy per epoch", right=supervised)
        parts.append(_img(curves, "training curves", wide=True))
        curves.unlink()
    for title, key in (("Confusion matrices", "confusion"), ("Analyses", "analysis"),
                       ("Transfer", "transfer")):  # fmt: skip
        figs = [_img(p, f"{r['name']}: {p.relative_to(Path(runs[i]))}")
                for i, r in enumerate(loaded) for p in r[key]]  # fmt: skip
        figs += [_img(p, f"{d.name}: {p.relative_to(d)}") for d in extra.get(title, [])
                 for p in sorted(d.glob("plots/*.png"))]  # fmt: skip
        if figs:
            parts.append(f"<h2>{title}</h2>" + "".join(figs))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>idmm report</title><style>{STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    out.write_text(page, encoding="utf-8")
    return out
