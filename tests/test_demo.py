"""The demo end to end on small generated Fashion-MNIST files: it trains a teacher, the three
students, prints the table, writes the plot, and reuses the cached teacher on a second run."""
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
