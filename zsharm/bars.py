"""Progress bars that leave nothing behind in a saved notebook.

In a terminal a bar is tqdm's. In a Jupyter kernel tqdm draws a widget, and the notebook keeps that widget's
text form in the cell's outputs: a notebook run headless (papermill, nbconvert) is saved with frozen
"0%|          | 0/50" lines, and reopened it shows them, or "Error displaying widget". Here, in a kernel, the
bar is displayed under a display id and replaced by nothing when it closes, so what is saved is the cell's
own output only.
"""

import sys


def _in_kernel() -> bool:
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def bar(iterable=None, **kwargs):
    """tqdm(iterable, **kwargs), vanishing when closed if it runs in a Jupyter kernel."""
    if _in_kernel() and not kwargs.get("disable"):
        try:
            return _vanishing_bar()(iterable, **kwargs)
        except ImportError:  # no ipywidgets: tqdm's text bar, as tqdm.auto would choose
            pass
    from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)


def _vanishing_bar():
    from IPython.display import display
    from tqdm.notebook import tqdm as notebook_bar

    class VanishingBar(notebook_bar):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, display=False, **kwargs)
            self._handle = None
            if not self.disable:
                self._handle = display(self.container, display_id=True)
                self.displayed = True

        def close(self):
            super().close()
            if self._handle is not None:
                self._handle.update({"text/plain": ""}, raw=True)
                self._handle = None

    return VanishingBar
