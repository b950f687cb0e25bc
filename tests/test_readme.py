"""Runs every Python block of README.md: the quickstart must work as printed."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.standard_promotion  # the complete loop uses optax.adam
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
    namespace: dict[str, object] = {}
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), namespace)
    if "test" in namespace:  # the training loop: it must actually learn
        assert "test accuracy" in capsys.readouterr().out
        assert float(namespace["test"]["accuracy"]) > 0.9
