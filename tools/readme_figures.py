"""The README's figures, from the commands that print them.

A figure in README.md sits between markers, `<!-- figure: NAME -->text<!-- /figure -->`; FIGURES says which
command prints it and how its output becomes the text. Run this after a change that moves a figure:

    python tools/readme_figures.py               # run every figure's command, rewrite the figures that moved
    python tools/readme_figures.py --check       # exit 1 and list the figures that moved; change nothing
    python tools/readme_figures.py --only NAME   # one figure (repeatable)

Times and rates vary from run to run and machine to machine: `--check` compares figures with them masked, and
the rewrite takes them from this run. Prose figures are compared without their line breaks, so README.md may
wrap them. The figures of a cold compile run with an empty kernel cache of their own.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
MARKED = re.compile(r"<!-- figure: (?P<name>[\w.-]+) -->(?P<text>.*?)<!-- /figure -->", re.DOTALL)
# What varies between runs of the same command: times and rates.
VOLATILE = re.compile(r"\d[\d,]*(\.\d+)? (s|ms|img/s)\b")
WEIGHTS = "frontends/zoo/weights/lenet5_digits.npz"
DIGITS = "frontends/zoo/weights/digits_test.npz"
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def cnncomp(*args: str, cache_dir: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"CNNCOMP_CACHE_DIR": cache_dir} if cache_dir else {})}
    result = subprocess.run([sys.executable, "-m", "cnncomp", *args], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"readme_figures: `cnncomp {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def lenet5_summary() -> str:
    """The summary table of the README's builder LeNet-5, its first layer and totals."""
    lines = cnncomp("summary", "examples/lenet5.py").stdout.splitlines()
    header = next(line for line in lines if line.startswith("Layer"))
    first = lines[lines.index(header) + 2]
    totals = [line for line in lines if line.startswith("Total")]
    return "\n```\n" + "\n".join([header, first, "...", *totals]) + "\n```\n"


@functools.cache
def _verbose_o3(model: str) -> str:
    """What `summary -O 3 --verbose` reports on stderr (once per model: two figures read ResNet-50's)."""
    return cnncomp("summary", model, "-O", "3", "--verbose").stderr


def _pass_line(report: str, name: str) -> str:
    return next(line for line in report.splitlines() if line.startswith(name + " "))


def _change(line: str, op: str) -> int:
    match = re.search(rf"\b{op} ([+-]\d+)", line)
    return -int(match.group(1)) if match else 0


def resnet50_fusion() -> str:
    report = _verbose_o3("resnet50")
    nodes = re.findall(r"nodes (\d+) -> (\d+)", report)
    folded = _change(_pass_line(report, "fold_batch_norm"), "batch_norm")
    fused = _pass_line(report, "fuse_epilogue")
    return (f"all {folded} batch norms folded, {_change(fused, 'add')} residual adds and {_change(fused, 'relu')} "
            f"ReLUs fused into the convs; {nodes[0][0]} ops become {nodes[-1][1]}")


def resnet50_plan() -> str:
    plan = re.search(r"arena ([\d.]+) MiB = ([\d.]+)x the lower bound .* on its own: ([\d.]+) MiB",
                     _verbose_o3("resnet50"))
    arena, ratio, separate = float(plan.group(1)), float(plan.group(2)), float(plan.group(3))
    bound = "the lower bound" if ratio == 1.0 else f"{ratio:.3f}x the lower bound"
    return (f"{arena:.1f} MiB, {bound} (the most bytes live at one step), against {separate:.0f} MiB for every "
            "tensor on its own")


def unet_concats() -> str:
    count = int(re.search(r"(\d+) concat\(s\) in place", _verbose_o3("unet")).group(1))
    return NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else str(count)


def _compile_line(cache_dir: str) -> str:
    with tempfile.TemporaryDirectory() as out:
        line = cnncomp("compile", "resnet18", "-o", f"{out}/resnet18.cnnx", cache_dir=cache_dir).stdout.strip()
        return line.replace(f"{out}/", "")


def resnet18_compile() -> str:
    """The closing lines of `compile`, cold (an empty kernel cache) and then warm."""
    with tempfile.TemporaryDirectory() as cache:
        cold = _compile_line(cache)
        warm = _compile_line(cache)
    cached = re.search(r"(\(\d+ compiled, \d+ from the cache\)).*, ([\d.]+ s) ->", warm)
    return f"`{cold}`; compiled again, the kernels come from the cache: `{cached.group(1)}, ..., {cached.group(2)}`"


def lenet5_errors() -> str:
    """The held-out digits' top-1 and top-5 errors (the cells of a table row), the same on each backend; where
    backends disagree, each one's."""
    errors: dict[str, str] = {}
    for backend in ("reference", "numba-cpu", "torch", "onnxruntime"):
        output = cnncomp("eval", "lenet5", "--weights", WEIGHTS, "-d", DIGITS, "-b", backend).stdout
        top1 = re.search(r"top-1 error: (\S+ \(\d+ of \d+\))", output).group(1)
        top5 = re.search(r"top-5 error: (\S+)", output).group(1)
        errors[backend] = f"{top1} | {top5}"
    if len(set(errors.values())) == 1:
        return next(iter(errors.values()))
    return "backends disagree: " + "; ".join(f"{backend} {cells}" for backend, cells in errors.items())


@dataclass(frozen=True)
class Figure:
    make: Callable[[], str]
    slow: bool = False  # minutes rather than seconds (a cold compile)


FIGURES = {
    "lenet5-summary": Figure(lenet5_summary),
    "resnet50-fusion": Figure(resnet50_fusion),
    "resnet50-plan": Figure(resnet50_plan),
    "unet-concats": Figure(unet_concats),
    "resnet18-compile": Figure(resnet18_compile, slow=True),
    "lenet5-errors": Figure(lenet5_errors),
}


def marked(text: str) -> dict[str, str]:
    """The figures README.md marks, by name."""
    figures = {}
    for match in MARKED.finditer(text):
        if match["name"] not in FIGURES:
            raise SystemExit(f"readme_figures: README.md marks an unknown figure {match['name']!r}")
        figures[match["name"]] = match["text"]
    return figures


def masked(text: str) -> str:
    """The text without what varies between runs; prose figures also without their line breaks (README.md wraps
    them), code blocks as they are."""
    text = VOLATILE.sub(lambda m: "<time>" if m.group(2) != "img/s" else "<rate>", text)
    return text if "```" in text else " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="list the figures that moved and exit 1; write nothing")
    parser.add_argument("--only", action="append", choices=sorted(FIGURES), metavar="NAME",
                        help=f"only this figure (repeatable): {', '.join(FIGURES)}")
    parser.add_argument("--skip-slow", action="store_true", help="leave out the figures that take minutes")
    args = parser.parse_args(argv)
    text = README.read_text()
    present = marked(text)
    missing = [name for name in FIGURES if name not in present]
    if missing:
        raise SystemExit(f"readme_figures: README.md does not mark {', '.join(missing)}")
    chosen = [name for name in (args.only or FIGURES) if not (args.skip_slow and FIGURES[name].slow)]
    made = {name: FIGURES[name].make() for name in chosen}
    moved = [name for name in chosen if masked(made[name]) != masked(present[name])]
    for name in moved:
        print(f"{name}: README has\n{present[name].strip()}\nthe command prints\n{made[name].strip()}\n")
    if args.check:
        print(f"{len(chosen) - len(moved)} of {len(chosen)} figures as the commands print them")
        return 1 if moved else 0
    changed = {name: made[name] for name in moved}
    updated = MARKED.sub(lambda m: f"<!-- figure: {m['name']} -->{changed.get(m['name'], m['text'])}<!-- /figure -->",
                         text)
    if updated != text:
        temporary = README.with_suffix(".md.tmp")
        temporary.write_text(updated)
        temporary.replace(README)
    print(f"README.md: {len(chosen)} figures made, {len(moved)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
