"""The results table of a sweep: rows (dicts of JSON scalars) -> CSV, Markdown, a summary.

Every row is one run; columns are the union of the rows' keys in first-seen order. Rows that
differ only in their seed are also summarised as mean ± std over seeds.
"""
import csv
import io
import math
import statistics

from ..io import write_text_atomic

__all__ = ["columns", "to_csv", "to_markdown", "seed_summary", "write_tables",
           "MARKDOWN_COLUMNS"]

# The Markdown table shows these (when present) plus the tests' parameters; the CSV has all.
MARKDOWN_COLUMNS = ("test", "method", "overrides", "seed", "teacher", "teacher_acc", "best_acc",
                    "last_acc", "t_student", "t_teacher", "n_fallback", "seconds", "status",
                    "error")
# Columns that differ between the seeds of one configuration, left out of its group key.
_PER_RUN = ("test", "seed", "run_dir", "seconds", "best_acc", "best_epoch", "last_acc",
            "t_student", "t_teacher", "t_student_min", "t_student_max", "t_teacher_min",
            "t_teacher_max", "n_fallback", "teacher_acc", "error", "status", "attempts")


def columns(rows):
    seen = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
    return str(value)


def to_csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


def _markdown(rows, cols):
    if not rows:
        return ""
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(rows, params=()):
    """The main columns (:data:`MARKDOWN_COLUMNS`) with the tests' ``params`` after ``method``."""
    present = columns(rows)
    cols = [c for c in MARKDOWN_COLUMNS if c in present]
    at = cols.index("method") + 1 if "method" in cols else len(cols)
    cols[at:at] = [p for p in params if p in present and p not in cols]
    return _markdown(rows, cols)


def seed_summary(rows, params=()):
    """Markdown: configurations run with more than one seed, as mean ± std (n) of best and last
    top-1; "" when no configuration has several seeds."""
    groups = {}
    for row in rows:
        if row.get("best_acc") is None:
            continue
        key = tuple((k, str(v)) for k, v in row.items() if k not in _PER_RUN)
        groups.setdefault(key, []).append(row)
    # group by the values' text; show the first member's values (numbers stay numbers)
    multi = [({k: members[0][k] for k, _ in key}, members)
             for key, members in groups.items() if len(members) > 1]
    if not multi:
        return ""
    shown = [c for c in ("method",) + tuple(params) + ("overrides", "teacher")
             if any(c in key for key, _ in multi)]
    out = []
    for key, members in multi:
        row = {c: key.get(c, "") for c in shown}
        for metric in ("best_acc", "last_acc"):
            row[metric] = _mean_std([m[metric] for m in members])
        row["seeds"] = len(members)
        out.append(row)
    return _markdown(out, shown + ["best_acc", "last_acc", "seeds"])


def _mean_std(values):
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return ""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {std:.2f}"


def write_tables(path, rows, params=()):
    """Write ``<path>.csv`` (every column) and ``<path>.md`` (main columns, then the seed
    summary) atomically; ``path`` may end in .csv or .md. Returns the two paths."""
    from pathlib import Path
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".csv", ".md") else path
    csv_path, md_path = Path(f"{stem}.csv"), Path(f"{stem}.md")
    write_text_atomic(csv_path, to_csv(rows))
    text = to_markdown(rows, params)
    summary = seed_summary(rows, params)
    if summary:
        text += "\nMean ± std over seeds:\n\n" + summary
    write_text_atomic(md_path, text)
    return csv_path, md_path
