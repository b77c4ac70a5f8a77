"""notebooks/quickstart.ipynb executes top to bottom with nbclient (on a tiny budget and
generated Fashion-MNIST files), from a folder outside the repository, with progress bars and
no warnings, and shows its figures and results table."""
import json
from pathlib import Path

import pytest

from test_data import make_fmnist

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_without_warnings(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="needs the 'notebook' extra: pip install 'dtkd[notebook]'")
    nbclient = pytest.importorskip("nbclient", reason="needs the 'notebook' extra: pip install 'dtkd[notebook]'")
    pytest.importorskip("ipykernel", reason="needs the 'notebook' extra: pip install 'dtkd[notebook]'")
    pytest.importorskip("matplotlib", reason="the notebook draws figures: pip install 'dtkd[plot]'")
    make_fmnist(tmp_path / "fmnist", "train", n=96, seed=1)
    make_fmnist(tmp_path / "fmnist", "test", n=48, seed=2)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook needs one cell tagged 'parameters'"
    # The budget cell, shrunk to seconds; every other cell runs as written.
    params[0].source = "\n".join([
        "TRAIN_IMAGES = 64", "TEST_IMAGES = 32", "TEACHER_EPOCHS = 1", "STUDENT_EPOCHS = 1",
        f"DATA_ROOT = {str(tmp_path / 'fmnist')!r}", f"WORK_DIR = {str(tmp_path / 'work')!r}"])
    # The kernel inherits the environment: its own teacher cache, 1 thread, no repo on the path.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("DTKD_DATA", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, "\n".join(o.ename + ": " + o.evalue for o in errors)
    stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "epoch 1" in stderr or "epochs" in stderr, "the training progress bars did not render"
    assert "Warning" not in stderr, stderr
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # samples, temperature histogram, accuracy, temperatures, sharpness
    markdown = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
    for method in ("vanilla", "KD", "DTKD"):
        assert f"| {method} |" in markdown
    assert (tmp_path / "work" / "runs" / "DTKD" / "log.jsonl").is_file()
    assert json.loads((tmp_path / "work" / "runs" / "DTKD" / "log.jsonl").read_text().splitlines()[0])["epoch"] == 1
