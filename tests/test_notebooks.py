"""The example notebooks are valid and stored without outputs.

They are executed by nbmake: ``python -m pytest --nbmake examples/``.
"""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_valid_and_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "a notebook without code"
    for cell in code:
        assert cell.outputs == [], f"{path.name}: clear the outputs before committing"
        assert cell.execution_count is None, f"{path.name}: clear the execution counts before committing"


def test_examples_exist():
    assert any(p.name == "01_mnist.ipynb" for p in NOTEBOOKS)
