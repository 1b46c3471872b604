"""curves.png: one panel per metric family / scale, test stars, the best step marked."""
import json

from vlft.common.curves import build_figure, family, metric_panels, plot_curves

CAPTION = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]


def caption_log():
    records = [{"kind": "train", "step": s, "loss": l, "lr": 1e-3} for s, l in ((5, 2.0), (10, None), (15, 1.0), (20, 0.8))]
    for step, q in ((0, 0.1), (10, 0.6), (20, 0.5)):
        metrics = {k: q for k in CAPTION if k != "CIDEr"}
        records.append({"kind": "eval/shapes/val", "step": step, **metrics, "CIDEr": 10 * q, "agg_metrics": 11 * q,
                        "phase": "val", "skipped_samples": 0})
    records.append({"kind": "eval/shapes/test", "step": 20, **{k: 0.7 for k in CAPTION}, "agg_metrics": 7.7,
                    "phase": "test", "skipped_samples": 0})
    return records


def test_metric_families():
    assert [family(k) for k in ("Bleu_4", "txt_r10", "mAP50", "mAP", "CIDEr", "ROUGE_L")] == \
        ["Bleu", "txt_r", "mAP", "mAP", "CIDEr", "ROUGE_L"]
    evals = [r for r in caption_log() if r["kind"] != "train"]
    assert metric_panels(evals) == [("Bleu", CAPTION[:4]), ("METEOR, ROUGE_L", ["METEOR", "ROUGE_L"]),
                                    ("CIDEr", ["CIDEr"]), ("agg_metrics", ["agg_metrics"])]


def test_panels_test_stars_and_best_step():
    fig = build_figure(caption_log())
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["training loss", "learning rate", "Bleu", "METEOR, ROUGE_L", "CIDEr", "agg_metrics"]
    agg = fig.axes[titles.index("agg_metrics")]
    labels = agg.get_legend_handles_labels()[1]
    assert "best val 6.6 (step 10)" in labels and "test (best weights)" in labels
    stars = [line for line in agg.get_lines() if line.get_marker() == "*" and len(line.get_xdata())]
    assert [(list(s.get_xdata()), list(s.get_ydata())) for s in stars] == [([20], [7.7])]
    bleu = fig.axes[titles.index("Bleu")]
    colours = {line.get_color() for line in bleu.get_lines() if line.get_linestyle() == "-"}
    assert len(colours) == 4  # one colour per series
    legend = bleu.get_legend()
    assert legend.get_bbox_to_anchor().x0 > bleu.get_window_extent().x1 - 1  # outside the axes


def test_plot_curves_writes_a_png_and_skips_a_torn_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in caption_log()) + '{"kind": "tra')
    png = plot_curves(log, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_curves(tmp_path / "missing.jsonl", tmp_path / "x.png") is None
