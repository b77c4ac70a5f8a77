"""Options of the ablation sweeps (the dtkd pytest plugin brings the fixtures).

``--seeds N`` runs every configuration with seeds 0..N-1 (the table then also shows mean ± std
over seeds). The budget is the shipped Fashion-MNIST configs' (5,000 training images, 5 epochs;
teachers 15,000 images, 4 epochs) unless ``--dtkd-set`` / ``--dtkd-teacher-set`` change it.
"""
import pytest


def pytest_addoption(parser):
    parser.addoption("--seeds", type=int, default=1, metavar="N",
                     help="run every configuration with seeds 0..N-1 (default 1)")


def pytest_generate_tests(metafunc):
    if "seed" in metafunc.fixturenames:
        n = metafunc.config.getoption("seeds")
        if n < 1:
            raise pytest.UsageError(f"--seeds: expected a positive count, got {n}")
        metafunc.parametrize("seed", range(n), ids=[f"seed{s}" for s in range(n)])
