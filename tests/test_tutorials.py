"""Every tutorial notebook runs top to bottom on the embedded model (they are stored without outputs)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = sorted((Path(__file__).resolve().parent.parent / "tutorials").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", TUTORIALS, ids=lambda path: path.name)
def test_tutorial_runs(notebook, tmp_path):
    book = nbformat.read(notebook, as_version=4)
    assert all(not cell.get("outputs") for cell in book.cells if cell.cell_type == "code"), "store tutorials without outputs"
    NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
