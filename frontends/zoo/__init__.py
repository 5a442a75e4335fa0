"""The zoo: every architecture of the lecture as a `.cnn` model description in this folder.

A zoo name is a file of this folder with some model parameters set: `resnet50` is `resnet.cnn` with depth 50,
`fcn8s` is `fcn.cnn` with stride 8. Each file's first comment line describes it. The driver finds this module
through the `cnncomp.zoos` entry point, so `cnncomp summary resnet50` works like a path to a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnncomp.errors import ModelLoadError
from cnncomp.ir import Graph
from frontends import dsl

FOLDER = Path(__file__).parent

# name: (file stem, model parameters), in the lecture's order.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "edge_detect": ("edge_detect", {}),
    "box_mean": ("box_mean", {}),
    "sharpen": ("sharpen", {}),
    "gaussian_blur": ("gaussian_blur", {}),
    "lenet5": ("lenet5", {}),
    "alexnet": ("alexnet", {}),
    "vgg11": ("vgg11", {}),
    "vgg11_lrn": ("vgg11_lrn", {}),
    "vgg13": ("vgg13", {}),
    "vgg16_c": ("vgg16_c", {}),
    "vgg16": ("vgg16", {}),
    "vgg19": ("vgg19", {}),
    "resnet18": ("resnet", {"depth": 18}),
    "resnet34": ("resnet", {"depth": 34}),
    "resnet50": ("resnet", {"depth": 50}),
    "resnet101": ("resnet", {"depth": 101}),
    "resnet152": ("resnet", {"depth": 152}),
    "inception_naive": ("inception_naive", {}),
    "inception": ("inception", {}),
    "googlenet": ("googlenet", {}),
    "xception": ("xception", {}),
    "fcn32s": ("fcn", {"stride": 32}),
    "fcn16s": ("fcn", {"stride": 16}),
    "fcn8s": ("fcn", {"stride": 8}),
    "unet": ("unet", {}),
    "efficientnet_b0": ("efficientnet_b0", {}),
    "mobilenet_v2": ("mobilenet_v2", {}),
}


def names() -> list[str]:
    return list(MODELS)


def path(name: str) -> Path:
    """The `.cnn` file a zoo model is written in."""
    if name not in MODELS:
        raise ModelLoadError(f"no zoo model {name!r}")
    return FOLDER / f"{MODELS[name][0]}.cnn"


def presets(name: str) -> dict[str, Any]:
    """The model parameters the zoo name sets in its file."""
    return dict(MODELS[name][1])


def describe(name: str) -> str:
    """The first comment line of the model's file."""
    for line in path(name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def load(name: str, structure_only: bool = False, *, strict: bool = False, **params: Any) -> Graph:
    """A zoo model as a Graph, named by its zoo name; `params` override the file's model parameters (and the
    zoo's presets). `structure_only` leaves the weights out (see `frontends.dsl.load_structure`); `strict` builds
    it in strict mode."""
    loader = dsl.load_structure if structure_only else dsl.load
    graph = loader(path(name), strict=strict, **{**presets(name), **params})
    graph.name = name
    return graph
