"""The end-of-run curves: the series read from metrics.csv are the ones drawn."""

from prefopt.training.plots import curves_figure, plot_curves, read_series

CSV = """epoch,step,train/loss,train/kl,val/loss,val/rewards/accuracies
0,0,,,0.69,0.5
0,9,0.6,0.1,,
0,19,0.4,0.3,,
0,19,,,0.45,0.8
"""


def test_series_skip_rows_without_the_metric(tmp_path):
    (tmp_path / "metrics.csv").write_text(CSV)
    series = read_series(tmp_path / "metrics.csv")
    assert series["train/loss"] == ([9, 19], [0.6, 0.4])
    assert series["val/loss"] == ([0, 19], [0.69, 0.45])
    assert "epoch" not in series and "step" not in series


def test_figure_draws_each_available_panel(tmp_path):
    (tmp_path / "metrics.csv").write_text(CSV)
    figure = curves_figure(read_series(tmp_path / "metrics.csv"))
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["loss", "preference accuracy", "KL to reference (k1)"]  # no margins logged
    train_line, val_line = figure.axes[0].get_lines()
    assert list(train_line.get_xdata()) == [9, 19] and list(val_line.get_ydata()) == [0.69, 0.45]
    png = plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_logger_option_writes_events_and_csv(compose, fast_overrides, tmp_path):
    from prefopt.training.train import train

    train(compose("logger=tensorboard", *fast_overrides, "export_policy=false"))
    run = tmp_path / "run"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "metrics.csv").exists() and (run / "curves.png").exists()
