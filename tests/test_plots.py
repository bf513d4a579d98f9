"""The pictures: every point of a short run shows, held-out series keep their own colours, a cell left empty is not
drawn like an open one."""

import json

import numpy as np

from dgft import plots


def _figure(monkeypatch):
    shown = []
    monkeypatch.setattr(plots.plt, "close", shown.append)
    return shown


def test_a_one_row_loss_curve_shows_its_point_and_heldout_series_have_their_own_colours(tmp_path, monkeypatch):
    shown = _figure(monkeypatch)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "loss": 2.0}, {"step": 1, "9x9_clamped_exact": 0.0, "4x4_clamped_exact": 1.0}]))
    plots.plot_loss(metrics, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0
    fig = shown[0]
    loss_ax, heldout_ax = fig.axes
    assert loss_ax.lines[0].get_marker() == "."  # a single point drawn as a bare line was invisible
    colours = [loss_ax.lines[0].get_color()] + [line.get_color() for line in heldout_ax.lines]
    assert len(set(colours)) == 3  # the first held-out series was the train loss's blue
    assert heldout_ax.get_ylim()[0] < 0 and heldout_ax.get_ylim()[1] > 1  # points at 0 and 1 drawn whole
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 3


def test_denoising_cells_empty_open_filled_and_given_look_different(tmp_path):
    styles = {
        "given": plots.cell_style(True, True, 5, 5),
        "right": plots.cell_style(False, True, 5, 5),
        "wrong": plots.cell_style(False, True, 4, 5),
        "open": plots.cell_style(False, False, 0, 5),
        "empty": plots.cell_style(False, True, 0, 5),  # accepted with no digit: the rules left nothing
    }
    assert len({(t, c, w, s) for t, c, w, s in styles.values()}) == 5
    assert styles["empty"][0] == "×" and styles["empty"][3] and styles["open"][0] == "·"
    frames = [np.array([1, 0, 0, 0] * 4), np.array([1, 2, 0, 0] * 4)]
    accepted = [np.array([1, 0, 0, 0] * 4, bool), np.array([1, 1, 1, 0] * 4, bool)]
    plots.plot_denoising(frames, accepted, np.array([1, 0, 0, 0] * 4), np.array([1, 2, 3, 4] * 4),
                         tmp_path / "d.png", title="t")
    assert (tmp_path / "d.png").stat().st_size > 0


def test_the_loss_axis_labels_are_plain_numbers(tmp_path, monkeypatch):
    """A loss from 6.5 down to 0.3 on a log axis: its labels read 0.3 and 2, not matplotlib's "3x10^-1" mathtext."""
    shown = _figure(monkeypatch)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps({"step": s, "loss": v}) for s, v in [(1, 6.5), (50, 2.0), (100, 0.3)]))
    plots.plot_loss(metrics, tmp_path / "loss.png")
    ax = shown[0].axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True) if t.get_text()]
    assert "0.3" in labels and "2" in labels and "1" in labels, labels
    assert not any("times" in label or "^" in label for label in labels), labels
