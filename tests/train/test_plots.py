"""Figures: built without pyplot, one panel per validation metric, bars and bins as given."""

import io

import numpy as np
import pytest

from recfunnel.train.plots import calibration_plot, metric_comparison, training_curves


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_training_curves_has_a_loss_panel_and_one_per_val_metric():
    history = [{"step": s, "epoch": s / 10, "train_loss": 1 / (1 + s)} for s in range(0, 30, 5)]
    history += [
        {"epoch": e, "split": "val", "auc": 0.6 + e / 100, "recall_at_100": 0.1 * e, "note": "x"} for e in (1, 2, 3)
    ]
    fig = training_curves(history)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["training loss", "val auc", "val recall_at_100"]
    assert list(visible[0].lines[0].get_xdata()) == [0, 5, 10, 15, 20, 25]
    assert list(visible[2].lines[0].get_ydata()) == pytest.approx([0.1, 0.2, 0.3])
    assert png(fig).startswith(b"\x89PNG")
    assert png(training_curves([])).startswith(b"\x89PNG")  # nothing logged yet: still a figure


def test_calibration_plot_skips_empty_bins():
    fig = calibration_plot({"mean_pred": [0.1, 0.5, 0.9], "mean_label": [0.12, 0.4, 0.0], "count": [10, 5, 0]})
    ax = fig.axes[0]
    diagonal, model = ax.lines
    assert list(diagonal.get_xdata()) == [0, 1] and list(model.get_xdata()) == [0.1, 0.5]
    with pytest.raises(ValueError, match="one length"):
        calibration_plot({"mean_pred": [0.1], "mean_label": [0.1, 0.2], "count": [1]})


def test_metric_comparison_groups_bars_by_metric():
    rows = {
        "two-tower": {"recall_at_10": 0.2, "recall_at_100": 0.5},
        "most-popular": {"recall_at_10": 0.1},
        "ease": {"recall_at_10": 0.25, "recall_at_100": 0.55},
    }
    fig = metric_comparison(rows, ["recall_at_10", "recall_at_100"])
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights[:2] == [0.2, 0.5] and np.isnan(heights[3]) and heights[4:] == [0.25, 0.55]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["recall_at_10", "recall_at_100"]
    assert png(fig).startswith(b"\x89PNG")
