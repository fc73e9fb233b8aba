"""report.md and the heatmaps from results alone: tables without values are left out, "Avg." is over
the same columns in every row, and a heatmap's cells and colour bar share one scale."""

from titans_eval_suite import report

ACCURACIES = {"piqa": "acc", "hellaswag": "acc_norm", "winogrande": "acc", "arc_easy": "acc",
              "arc_challenge": "acc_norm", "social_iqa": "acc", "boolq": "acc"}
NEEDLE = {"passkey": {"256": {"0": 1.0, "100": 0.5}, "512": {"0": 0.25, "100": 0.0}}}


def checkpoint(name, results):
    return {"name": name, "variant": "mag", "step": 8, "results": results}


def lm_row(lines, c):
    return next(line for line in lines if line.startswith(f"| {report.label(c)} |")).split(" | ")


def test_a_needle_only_run_has_no_language_modelling_table():
    text = report.markdown({"settings": {}, "checkpoints": [checkpoint("a", {"needle": NEEDLE})]}, {})
    assert "## Needle" in text and "## Language modeling" not in text and "Avg." not in text


def test_the_average_needs_every_accuracy_column():
    full = {"lambada": {"perplexity": 20.0, "accuracy": 0.5},
            "harness": {task: {metric: 0.25} for task, metric in ACCURACIES.items()}}
    partial = {"lambada": {"perplexity": 20.0, "accuracy": 0.5}, "harness": {"piqa": {"acc": 0.75}}}
    a, b = checkpoint("full", full), checkpoint("partial", partial)
    lines = report.language_modeling_table([a, b])
    assert lm_row(lines, a)[-1].strip(" |") == f"{(50 + 7 * 25) / 8:.2f}"
    assert lm_row(lines, b)[-1].strip(" |") == "-"  # only two of the eight: not comparable with the first row
    assert "75.00" in lm_row(lines, b)


def test_heatmap_cells_and_colour_bar_share_the_scale(tmp_path, monkeypatch):
    import matplotlib.image

    figures, save = [], report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: (figures.append(fig), save(fig, path)))
    path = report.needle_heatmap(checkpoint("a", {"needle": NEEDLE}), str(tmp_path / "needle.png"))
    assert matplotlib.image.imread(path).ndim == 3
    panel, colour_bar = figures[0].axes
    image = panel.get_images()[0]
    assert image.get_clim() == (0, 100) and "%" in colour_bar.get_ylabel()
    values = [v for row in image.get_array().tolist() for v in row]
    assert sorted(float(t.get_text()) for t in panel.texts) == sorted(values) == [0, 25, 50, 100]
