"""The explorer: one offline page over a trained run (``inceptionlab serve RUN_DIR``, or :func:`show` in a
notebook): predictions with Inception branches knocked out, block anatomy, input sizes, curves, confusion matrix
and each branch's most activating test images. docs/explorer.md describes the page and its security model."""

from __future__ import annotations

import os


def show(run_dir: str | os.PathLike, *, port: int = 0, height: int = 900, data_dir=None, device: str = "cpu",
         subset: int = 500):
    """Start the explorer for ``run_dir`` on a background thread (127.0.0.1, ``port`` 0: any free port) and return
    an ``IPython.display.IFrame`` of its page; ``.server.shutdown()`` on the result stops it."""
    from IPython.display import IFrame  # only a notebook needs IPython

    from inceptionlab.explore.model import Explorer
    from inceptionlab.explore.server import ExplorerServer, start_in_thread

    server = ExplorerServer(Explorer(run_dir, data_dir=data_dir, device=device, subset=subset), port=port)
    start_in_thread(server)
    frame = IFrame(server.url, width="100%", height=height)
    frame.server = server
    return frame
