"""``curves.png``: a run's ``log.jsonl`` drawn as one panel per quantity and scale.

Panels: training loss(es); learning rate; then the evaluation metrics, one panel per
family (``Bleu_1``..``Bleu_4`` together, ``txt_r1``/``txt_r5``/``txt_r10`` together,
``mAP``/``mAP50``/``mAP75`` together); single metrics on a 0..1 scale (METEOR, ROUGE_L,
accuracy) share one panel, any other (CIDEr, 0..10) has its own; ``agg_metrics``
last, with the best validation step marked. Validation is drawn as lines, test
results (written with ``"phase": "test"``) as stars, and every legend sits outside
its axes so it never hides a curve.
"""
from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

_NOT_METRICS = {"kind", "step", "time", "phase", "skipped_samples", "count"}
_LINESTYLES = ["-", "--", ":", "-."]


def read_records(jsonl: Path) -> List[Dict[str, Any]]:
    """The records of ``log.jsonl``, skipping a torn last line."""
    records = []
    for line in Path(jsonl).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def family(metric: str) -> str:
    """``Bleu_4`` -> ``Bleu``, ``txt_r10`` -> ``txt_r``, ``mAP50`` -> ``mAP``, ``CIDEr`` -> ``CIDEr``."""
    m = re.match(r"^(.*?[A-Za-z])[_@-]?\d+$", metric)
    return m.group(1) if m else metric


def _number(v: Any) -> bool:
    return isinstance(v, float) and math.isfinite(v)


def _phase(record: Dict[str, Any]) -> str:
    if "phase" in record:
        return "test" if record["phase"] == "test" else "val"
    return "test" if "test" in record["kind"].rsplit("/", 1)[-1] else "val"


def metric_panels(evals: List[Dict[str, Any]]) -> List[Tuple[str, List[str]]]:
    """(title, metric names) per evaluation panel, ``agg_metrics`` last."""
    names = list(OrderedDict.fromkeys(k for r in evals for k, v in r.items() if k not in _NOT_METRICS and _number(v)))
    families: Dict[str, List[str]] = OrderedDict()
    for name in names:
        if name != "agg_metrics":
            families.setdefault(family(name), []).append(name)
    groups, fractions, singles = [], [], []
    for fam, members in families.items():
        values = [r[k] for r in evals for k in members if _number(r.get(k))]
        if len(members) > 1:
            groups.append((fam, members))
        elif values and 0 <= min(values) and max(values) <= 1:
            fractions.extend(members)  # single 0..1 metrics share a panel
        else:
            singles.append((fam, members))
    panels = groups + ([(", ".join(fractions), fractions)] if fractions else []) + singles
    if "agg_metrics" in names:
        panels.append(("agg_metrics", ["agg_metrics"]))
    return panels


def build_figure(records: List[Dict[str, Any]], title: str = ""):
    """The matplotlib figure for ``records`` (``log.jsonl`` entries)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if str(r.get("kind", "")).startswith("eval/")]
    loss_keys = list(OrderedDict.fromkeys(k for r in train for k in r if k.startswith("loss")))
    panels = [("training loss", loss_keys), ("learning rate", ["lr"])] if train else []
    panels += metric_panels(evals)
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 3.4 * nrows), squeeze=False, layout="constrained")
    colours = plt.get_cmap("tab10").colors
    for ax, (name, keys) in zip(axes.flat, panels):
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if name in ("training loss", "learning rate"):
            for i, k in enumerate(keys):
                pts = [(r["step"], r[k]) for r in train if _number(r.get(k))]
                if pts:
                    ax.plot(*zip(*pts), color=colours[i % 10], lw=1.4, label=k)
            if name == "learning rate":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        else:
            _draw_metrics(ax, evals, keys, colours)
        if len(ax.get_legend_handles_labels()[0]) > (1 if name in ("training loss", "learning rate") else 0):
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _draw_metrics(ax, evals, keys, colours) -> None:
    """Validation lines and test stars; one colour per metric, one line style per dataset."""
    datasets = list(OrderedDict.fromkeys(r["kind"][5:].rsplit("/", 1)[0] for r in evals))
    has_test = False
    for i, key in enumerate(keys):
        colour = colours[i % 10]
        for j, ds in enumerate(datasets):
            rows = [r for r in evals if r["kind"][5:].rsplit("/", 1)[0] == ds and _number(r.get(key))]
            val = [(r["step"], r[key]) for r in rows if _phase(r) == "val"]
            test = [(r["step"], r[key]) for r in rows if _phase(r) == "test"]
            label = f"{ds} {key}" if len(datasets) > 1 else key
            if val:
                ax.plot(*zip(*val), color=colour, ls=_LINESTYLES[j % 4], marker="o", ms=3, lw=1.4, label=label)
            if test:
                has_test = True
                ax.plot(*zip(*test), ls="none", marker="*", ms=14, color=colour, mec="black", mew=0.7,
                        label=None if val else f"{label} (test)", zorder=5)
                if len(keys) == 1:
                    s, v = test[-1]
                    ax.annotate(f"test {v:.3g}", (s, v), xytext=(-10, -4), textcoords="offset points",
                                ha="right", va="top", fontsize=8)
    if keys == ["agg_metrics"]:
        _mark_best(ax, evals)
    if has_test:
        ax.plot([], [], ls="none", marker="*", ms=12, color="white", mec="black", label="test (best weights)")


def _mark_best(ax, evals) -> None:
    """The step whose validation agg_metrics (mean over the validated datasets) was best,
    as the runner picks ``checkpoint_best.pth``."""
    by_step: Dict[int, List[float]] = {}
    for r in evals:
        if _phase(r) == "val" and _number(r.get("agg_metrics")):
            by_step.setdefault(r["step"], []).append(r["agg_metrics"])
    if not by_step:
        return
    means = {s: sum(v) / len(v) for s, v in by_step.items() if len(v) == len(by_step[max(by_step)])}
    step = max(means, key=lambda s: (means[s], -s))  # the first of equal bests, as the runner keeps it
    ax.axvline(step, color="grey", ls=":", lw=1)
    ax.plot([step], [means[step]], ls="none", marker="o", ms=11, mfc="none", mec="crimson", mew=1.8,
            label=f"best val {means[step]:.3g} (step {step})", zorder=6)


def plot_curves(jsonl: Path, out_png: Path) -> Optional[Path]:
    """Loss, learning-rate and evaluation-metric curves from ``log.jsonl`` to ``out_png``."""
    jsonl = Path(jsonl)
    if not jsonl.is_file():
        return None
    fig = build_figure(read_records(jsonl), title=f"run {jsonl.parent.name}")
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
