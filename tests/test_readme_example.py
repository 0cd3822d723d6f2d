"""The README's notebook example runs as written and prints the numbers its comments show (its model is seeded)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _notebook_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("In a notebook, one call classifies a video")
    code = text[start:].split("```python\n", 1)[1].split("```", 1)[0]
    return code


def test_the_notebook_example_shows_what_it_prints() -> None:
    code = _notebook_block()
    namespace: dict = {}
    values = []
    for node in ast.parse(code).body:  # each bare expression's value, as a notebook cell would show it
        if isinstance(node, ast.Expr):
            values.append(eval(compile(ast.Expression(node.value), "README", "eval"), namespace))
        else:
            exec(compile(ast.Module([node], []), "README", "exec"), namespace)
    prediction, fc6_shape, mean_shape = values[-3:]  # after torch.manual_seed(0)
    shown = re.findall(r"'label': '([^']+)', 'index': (\d+), 'prob': ([0-9.]+)\.\.\.", code)
    assert len(shown) == 2
    for got, (label, index, prob) in zip(prediction["top_k"], shown):
        assert (got["label"], got["index"]) == (label, int(index))
        assert f"{got['prob']:.{len(prob) - 2}f}" == prob
    assert f"{tuple(fc6_shape)}" in code and f"{tuple(mean_shape)}" in code
