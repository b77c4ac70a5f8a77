"""The progress-bar class dtkd uses: widgets in a Jupyter kernel that has ipywidgets, text
everywhere else, and never a warning.

``tqdm.auto`` picks the notebook bar inside a Jupyter kernel but, when ipywidgets is missing,
warns (``TqdmWarning: IProgress not found``) on import and falls back to text. dtkd treats
ipywidgets as optional, so it makes the same choice itself without the warning.
"""
import sys

__all__ = ["tqdm"]


def _in_jupyter_kernel():
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too old or half-initialised to answer
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _choose():
    if _in_jupyter_kernel():
        try:
            import ipywidgets  # noqa: F401  (the widget bar needs it)
            from tqdm.notebook import tqdm as notebook_tqdm
            return notebook_tqdm
        except ImportError:
            pass
    from tqdm.std import tqdm as text_tqdm
    return text_tqdm


tqdm = _choose()
