"""dtkd.plots and `python -m dtkd plot`: every figure from real (tiny) runs, written as PNGs;
the probe log they read; clear errors; progress bars that never warn in a notebook."""
import json
import sys
import types
import warnings

import numpy as np
import pytest

from dtkd import cli
from dtkd.engine import read_log, read_probe
from dtkd.io import atomic_write
from dtkd.testing import Sweep
from test_data import make_fmnist

PNG = b"\x89PNG\r\n\x1a\n"
EPOCHS = 2
PROBE = 12


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """vanilla, KD and DTKD students from a resnet8 teacher, DTKD from a resnet14 teacher."""
    base = tmp_path_factory.mktemp("plots")
    make_fmnist(base / "data", "train", n=64, seed=1)
    make_fmnist(base / "data", "test", n=32, seed=2)
    sweep = Sweep(base / "runs", cache_root=base / "cache", threads=1, overrides={
        "DATASET.ROOT": str(base / "data"), "DATASET.SUBSET": 64, "DATASET.TEST.SUBSET": 32,
        "SOLVER.EPOCHS": EPOCHS, "SOLVER.BATCH_SIZE": 32, "LOG.PROBE_SAMPLES": PROBE},
        teacher_overrides={"SOLVER.EPOCHS": 1})
    results = {"vanilla": sweep.distill("vanilla"),
               "KD": sweep.distill("KD", teacher="resnet8"),
               "DTKD": sweep.distill("DTKD", teacher="resnet8"),
               "DTKD-r14": sweep.distill("DTKD", teacher="resnet14", name="DTKD-r14")}
    return base / "runs", {k: r.run_dir for k, r in results.items()}


def test_probe_logs_every_epoch_and_dtkd_temperatures_sum_to_twice_the_reference(runs):
    _, dirs = runs
    probe = read_probe(dirs["DTKD"])
    assert [p["epoch"] for p in probe] == list(range(EPOCHS + 1))  # before training, then each
    for record in probe:
        assert len(record["labels"]) == len(record["max_student"]) == PROBE
        t_s, t_t = np.array(record["t_student"]), np.array(record["t_teacher"])
        # the official rule: T_s = 2 m_s/(m_s+m_t) T and T_t = 2 m_t/(m_s+m_t) T
        m_s, m_t = np.array(record["max_student"]), np.array(record["max_teacher"])
        np.testing.assert_allclose(t_s + t_t, 2 * record["temperature"], rtol=1e-5)
        np.testing.assert_allclose(t_s, 2 * m_s / (m_s + m_t) * record["temperature"], rtol=1e-4)
        assert np.all(np.array(record["lse_student"]) >= m_s - 1e-5)  # logsumexp >= max
    vanilla = read_probe(dirs["vanilla"])
    assert len(vanilla) == EPOCHS + 1 and "max_teacher" not in vanilla[0]


def test_plot_command_draws_every_figure_the_logs_support(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "figures"
    assert cli.main(["plot", str(root), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    # vanilla and KD log no temperatures; vanilla has no teacher to compare sharpness with
    assert names == ["accuracy.png", "sharpness-DTKD-r14.png", "sharpness-DTKD.png",
                     "sharpness-KD.png", "teacher_size.png", "temperatures-DTKD-r14.png",
                     "temperatures-DTKD.png"]
    printed = capsys.readouterr().out
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG
        assert f"wrote {out / name}" in printed
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_figures_have_the_reference_temperature_and_whole_epoch_ticks(runs):
    from dtkd import plots
    _, dirs = runs
    fig = plots.temperatures(dirs["DTKD"])
    ax = fig.axes[0]
    assert [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]] == [1, 2]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "reference T = 4" in labels and "T_s 25-75 % (probe)" in labels
    # the legend sits below the axes, outside the data
    fig.canvas.draw()
    legend_box = ax.get_legend().get_window_extent()
    assert legend_box.y1 <= ax.get_window_extent().y0
    plots.pyplot().close(fig)


def test_tsne_of_pooled_features_kd_vs_dtkd(runs, tmp_path):
    pytest.importorskip("sklearn", reason="the t-SNE figure needs scikit-learn (dtkd[tsne])")
    from threadpoolctl import threadpool_limits
    from dtkd import plots
    _, dirs = runs
    # one OpenMP thread: on a loaded shared machine t-SNE's spinning threads take minutes
    with threadpool_limits(limits=1):
        fig = plots.tsne([dirs["KD"], dirs["DTKD"]], samples=24)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["KD", "DTKD"]
    assert len(fig.axes[0].collections[0].get_offsets()) == 24
    assert plots.save(fig, tmp_path / "tsne.png").read_bytes()[:8] == PNG


def test_plot_errors_name_the_problem(runs, tmp_path, capsys):
    from dtkd import plots
    _, dirs = runs
    assert cli.main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert cli.main(["plot", str(dirs["KD"]), "--tsne", "--tsne-samples", "1"]) == 2
    assert "--tsne-samples: expected at least 2" in capsys.readouterr().err
    with pytest.raises(ValueError, match="history: no per-epoch temperatures"):
        plots.draw_temperatures(None, read_log(dirs["KD"]))
    with pytest.raises(ValueError, match="at least two teachers"):
        plots.teacher_size([dirs["KD"], dirs["DTKD"]])
    with pytest.raises(ValueError, match="no teacher sharpness"):
        plots.sharpness(dirs["vanilla"])


def test_missing_matplotlib_says_how_to_install_it(monkeypatch):
    from dtkd import plots
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'dtkd\[plot\]'"):
        plots.pyplot()


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_progress_bars_in_a_kernel_without_ipywidgets_are_text_and_silent(monkeypatch):
    import dtkd._progress as progress
    from tqdm.std import tqdm as text_tqdm
    kernel = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert progress._choose() is text_tqdm
