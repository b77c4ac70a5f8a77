"""README's set-up commands, as a newcomer types them: they must work verbatim from the root of a
fresh clone, and CI must run the test command README gives."""
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

needs_checkout = pytest.mark.skipif(not README.is_file() or not (ROOT / ".git").exists(),
                                    reason="needs the git checkout (README.md, .git)")


def readme_command(heading):
    """The one-line bash command in the first fenced block after the bold ``heading``."""
    text = README.read_text()
    at = text.index(f"**{heading}**")
    block = re.search(r"```bash\n(.*?)\n```", text[at:], re.S).group(1).strip()
    assert "\n" not in block, f"README's {heading!r} block must be one command"
    return block


@needs_checkout
def test_readme_has_the_two_setup_commands():
    demo = readme_command("Run the demo")
    tests = readme_command("Run the tests")
    # the extension is built inside the clone, so the source folder is importable as is
    assert "pip install -e '.[demo]'" in demo and demo.endswith("python -m dtkd demo")
    assert "apt-get install -y dataset-fashion-mnist" in demo
    assert "pip install -e '.[test]'" in tests and tests.endswith("python -m pytest -q tests")


@needs_checkout
def test_ci_runs_the_readme_test_command_verbatim():
    assert readme_command("Run the tests") in (ROOT / ".ci" / "run").read_text().splitlines()


def bare_python(code, *flags):
    """A Python without site-packages' .pth hooks (-S), so that an editable install of this very
    checkout cannot resolve dtkd._C behind the copied folder's back; NumPy comes by PYTHONPATH."""
    return [sys.executable, "-S", *flags, "-c", code]


def numpy_path():
    import numpy
    return str(Path(numpy.__file__).resolve().parents[1])


def test_a_source_folder_without_the_extension_says_what_to_do(tmp_path):
    # what a notebook or `python -m ...` in an unbuilt clone meets: no circular-import riddle
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "dtkd", clone / "dtkd",
                    ignore=shutil.ignore_patterns("_C.*", "__pycache__"))
    (clone / "csrc").mkdir()
    (clone / "setup.py").write_text("")
    r = subprocess.run(bare_python("import dtkd"), cwd=clone, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": numpy_path()})
    assert r.returncode == 1
    assert "ImportError: dtkd is being imported from its source folder" in r.stderr
    assert "python -m pip install -e ." in r.stderr


def test_a_stale_in_place_build_is_warned_about(tmp_path):
    import dtkd
    clone = tmp_path / "clone"
    shutil.copytree(Path(dtkd.__file__).parent, clone / "dtkd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (clone / "csrc" / "kernels").mkdir(parents=True)
    (clone / "setup.py").write_text("")
    built = next((clone / "dtkd").glob("_C.*"))
    source = clone / "csrc" / "kernels" / "losses.c"
    source.write_text("/* edited after the build */\n")
    os.utime(built, (1_000_000_000, 1_000_000_000))
    r = subprocess.run(bare_python("import dtkd", "-W", "always"), cwd=clone, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": numpy_path()})
    assert r.returncode == 0, r.stderr
    assert "RuntimeWarning" in r.stderr and "losses.c" in r.stderr and "pip install -e ." in r.stderr


# ---- the newcomer's first minutes, for real ---------------------------------------------------

FRESH_CLONE = os.environ.get("CI") == "true" or os.environ.get("DTKD_CLONE_TEST") == "1"


@needs_checkout
@pytest.mark.skipif(not FRESH_CLONE, reason="clones the repository, runs apt-get and a fresh pip "
                    "build (minutes, root): runs in CI, or set DTKD_CLONE_TEST=1")
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_readme_demo_command_works_verbatim_from_a_fresh_clone(tmp_path):
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        pytest.skip("README's demo command runs apt-get: needs root")
    clone = tmp_path / "dtkd"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    # a fresh environment: a new venv (nothing preinstalled), its python first on PATH
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "DEBIAN_FRONTEND": "noninteractive"}
    for key in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(key, None)
    demo = readme_command("Run the demo") + " --quick --threads 2"
    script = textwrap.dedent(f"""\
        set -e
        {demo}
        test -s dtkd_demo/results.txt && test -s dtkd_demo/dtkd_demo.png
        python -m dtkd --help > /dev/null
        python -c "import dtkd; assert dtkd.__file__.startswith('{clone}'), dtkd.__file__"
        python benchmarks/bench_losses.py --help > /dev/null
        """)
    r = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    assert "Fashion-MNIST test accuracy" in r.stdout


def readme_python_blocks():
    return re.findall(r"```python\n(.*?)\n```", README.read_text(), re.S)


@needs_checkout
def test_readme_python_training_example_runs_as_written(tmp_path):
    # on small generated Fashion-MNIST files (the example's subsets then take them all)
    sys.path.insert(0, str(Path(__file__).parent))
    from test_data import make_fmnist
    data = tmp_path / "fmnist"
    make_fmnist(data, "train", n=192, seed=1)
    make_fmnist(data, "test", n=96, seed=2)
    example = next(b for b in readme_python_blocks() if "build_trainer(teacher_cfg" in b)
    env = {**os.environ, "DTKD_DATA": str(data), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "runs" / "teacher" / "model_best.npz").exists()
    assert (tmp_path / "runs" / "dtkd" / "log.jsonl").read_text().count("\n") == 2
