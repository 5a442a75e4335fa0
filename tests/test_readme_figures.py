"""The README's figures are what their commands print now (`tools/readme_figures.py`): each marked figure is made
again from its command and compared, times and rates aside."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "tools" / "readme_figures.py")
readme_figures = sys.modules["readme_figures"] = importlib.util.module_from_spec(spec)  # dataclasses need it listed
spec.loader.exec_module(readme_figures)


def test_the_readme_marks_every_figure_once():
    text = (ROOT / "README.md").read_text()
    assert set(readme_figures.marked(text)) == set(readme_figures.FIGURES)
    assert all(text.count(f"<!-- figure: {name} -->") == 1 for name in readme_figures.FIGURES)


def test_times_and_rates_are_masked_and_prose_may_wrap():
    masked = readme_figures.masked
    assert masked("compiled, 40.4 s -> x; 1,412 img/s") == masked("compiled, 0.8 s -> x; 3 img/s")
    assert masked("176 ops\nbecome 61") == masked("176 ops become 61") != masked("175 ops become 60")
    assert masked("```\nLayer  Op\n```") != masked("```\nLayer Op\n```")  # code blocks as printed


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.slow] if figure.slow else [])
                                  for name, figure in readme_figures.FIGURES.items()])
def test_the_figure_is_what_its_command_prints(name, capsys):
    assert readme_figures.main(["--check", "--only", name]) == 0, capsys.readouterr().out
