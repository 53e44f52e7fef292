"""notebooks/googlenet.ipynb runs top to bottom in a real Jupyter kernel (smoke budget), so it cannot rot; the
committed file has no outputs and is what notebooks/build_notebook.py writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook extra (pip install 'inceptionlab[dev]')")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "googlenet.ipynb"


def _built():
    spec = importlib.util.spec_from_file_location("build_notebook", NOTEBOOK.with_name("build_notebook.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()


def test_committed_notebook_is_the_built_one_without_outputs():
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in committed.cells if cell.cell_type == "code")
    assert [c.source for c in committed.cells] == [c.source for c in _built().cells]


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_with_live_curves(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert notebook.cells[1].source.startswith("# Parameters")
    notebook.cells[1].source = "SMOKE = True"
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()
    training = next(c for c in notebook.cells if "result = train(config)" in c.source)
    pictures = [o for o in training.outputs if "image/png" in o.get("data", {})]
    assert pictures, "the training cell showed no live curves"
    assert "test acc" in "".join(o.get("text", "") for o in training.outputs)
    assert list((tmp_path / "runs").glob("*/model.safetensors"))
