"""Ablation sweeps as parametrized pytest tests.

Installing dtkd registers the pytest plugin :mod:`dtkd.testing.plugin` (entry point
``pytest11``), whose fixtures train cached teachers, run students and collect a results table::

    import pytest

    @pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
    def test_dtkd_alpha(distill, alpha):
        result = distill("DTKD", {"DTKD.ALPHA": alpha})
        assert result.best_acc > 10

    $ pytest test_alpha.py --dtkd-results results     # -> results.csv, results.md, a summary

The same machinery without pytest: :class:`Sweep`. The method list of the sweeps is
:data:`METHODS` (one line per method).
"""
from .results import seed_summary, to_csv, to_markdown, write_tables
from .sweep import METHODS, TEACHER_CONFIGS, DistillResult, Method, Sweep

__all__ = ["METHODS", "TEACHER_CONFIGS", "Method", "Sweep", "DistillResult", "write_tables",
           "to_csv", "to_markdown", "seed_summary"]
