"""The demo end to end on small generated Fashion-MNIST files: asked to (--teacher-epochs,
--train-teacher) it trains a teacher, then the three students, prints the table, writes the plot,
and reuses the cached teacher on a second run. Its default, the shipped teacher: test_pretrained."""
import pytest

from dtkd import demo
from test_data import make_fmnist


@pytest.fixture
def tiny_fmnist(tmp_path, monkeypatch):
    monkeypatch.delenv("DTKD_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "fmnist"
    make_fmnist(data, "train", n=192, seed=1)
    make_fmnist(data, "test", n=96, seed=2)
    return data


def run_demo(data, out, *extra):
    return demo.main(["--out", str(out), "--data", str(data), "--subset", "128", "--epochs", "1",
                      "--teacher-epochs", "1", "--no-progress", "--threads", "2", *extra])


def test_demo_trains_teacher_and_three_students_then_reports(tiny_fmnist, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the demo's plot needs matplotlib (pip install 'dtkd[plot]')")
    out = tmp_path / "demo"
    assert run_demo(tiny_fmnist, out) == 0
    printed = capsys.readouterr().out
    table = (out / "results.txt").read_text()
    for row in ("teacher", "Vanilla CE", "KD", "DTKD"):
        assert row in table and row in printed
    png = out / "dtkd_demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in printed
    for run in ("teacher", "vanilla", "kd", "dtkd"):
        assert (out / run / "log.jsonl").read_text().strip(), f"{run} wrote no epoch log"
    assert "t_student_mean" in (out / "dtkd" / "log.jsonl").read_text()


def test_demo_reuses_the_cached_teacher(tiny_fmnist, tmp_path, capsys):
    assert run_demo(tiny_fmnist, tmp_path / "first", "--no-plot") == 0
    capsys.readouterr()
    assert run_demo(tiny_fmnist, tmp_path / "second", "--no-plot") == 0
    printed = capsys.readouterr().out
    assert "reusing cached weights" in printed
    assert not (tmp_path / "second" / "teacher").exists()
    first = (tmp_path / "first" / "results.txt").read_text().splitlines()
    second = (tmp_path / "second" / "results.txt").read_text().splitlines()
    # same seed, same teacher, same data: the students' accuracies repeat exactly
    strip_time = lambda rows: [r.rsplit(None, 1)[0] for r in rows[2:]]
    assert strip_time(first) == strip_time(second)


def _history(epochs, t_s=(2.0, 3.0, 3.5), t_t=(6.0, 5.0, 4.5)):
    return [{"epoch": e, "test_acc": 50.0 + e, "t_student_mean": t_s[0], "t_student_min": t_s[0] - 1,
             "t_student_max": t_s[0] + 1, "t_teacher_mean": t_t[0], "t_teacher_min": t_t[0] - 1,
             "t_teacher_max": t_t[0] + 1} for e in range(1, epochs + 1)]


@pytest.mark.parametrize("epochs", [1, 3, 40])
def test_demo_plot_has_whole_epochs_a_reference_line_and_legends_off_the_data(epochs):
    plt = pytest.importorskip("matplotlib.pyplot", reason="the plot needs matplotlib")
    results = {m: ({}, _history(epochs), 0.0) for m, _ in demo.METHODS}
    fig = demo.figure(results, 90.0, temperature=4.0)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax_acc, ax_t = fig.axes
        for ax in (ax_acc, ax_t):
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
            if epochs <= 10:
                assert ticks == list(range(1, epochs + 1))
            legend = ax.get_legend().get_window_extent(renderer)
            assert not legend.overlaps(ax.get_window_extent(renderer)), "legend covers the axes"
        assert any(list(line.get_ydata()) == [4.0, 4.0] for line in ax_t.get_lines()), \
            "no line at the reference temperature"
    finally:
        plt.close(fig)


def test_demo_quick_is_seconds_and_logs_a_line_per_epoch(tiny_fmnist, tmp_path, capsys):
    # --quick fills in tiny sizes; without a terminal (captured), progress goes out as lines
    assert demo.main(["--quick", "--out", str(tmp_path / "q"), "--data", str(tiny_fmnist),
                      "--no-plot", "--threads", "2"]) == 0
    printed = capsys.readouterr().out
    # the shipped teacher (tests/test_pretrained.py): three students, one epoch each
    assert printed.count("epoch 1: lr ") == 3
    config = (tmp_path / "q" / "dtkd" / "config.yaml").read_text()
    assert "EPOCHS: 1" in config and "SUBSET: 300" in config


def test_demo_quick_with_train_teacher_trains_it_for_one_epoch(tiny_fmnist, tmp_path, capsys):
    assert demo.main(["--quick", "--train-teacher", "--out", str(tmp_path / "q"), "--data",
                      str(tiny_fmnist), "--no-plot", "--threads", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("epoch 1: lr ") == 4  # teacher and three students, one epoch each
    assert "EPOCHS: 1" in (tmp_path / "q" / "teacher" / "config.yaml").read_text()
