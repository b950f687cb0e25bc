"""Runs every Python block of README.md: the examples must work as printed."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.DOTALL | re.MULTILINE)


def test_readme_has_python_blocks():
    # The functional example, with its training loop.
    assert len(BLOCKS) >= 1
    assert any("make_train_step" in block for block in BLOCKS)


@pytest.mark.standard_promotion  # the training loop uses optax.adam
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
    namespace: dict[str, object] = {}
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), namespace)
    if "test" in namespace:  # a training loop: it must actually learn
        out = capsys.readouterr().out
        assert "test accuracy" in out
        # Three classes: chance is 1/3; the blobs are well separated.
        assert float(namespace["test"]["accuracy"]) > 0.9


def test_readme_training_example_is_checked():
    # The accuracy check above runs only where a block leaves a `test` evaluation behind.
    assert any(re.search(r"^test = jdrop\.evaluate\(", block, flags=re.MULTILINE) for block in BLOCKS)
