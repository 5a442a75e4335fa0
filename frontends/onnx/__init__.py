"""ONNX models as cnncomp graphs: `cnncomp summary model.onnx`, `load_model("model.onnx")`.

    graph = frontends.onnx.load("resnet18.onnx")                                 # a symbolic batch axis is 1
    graph = frontends.onnx.load("fcn.onnx", input_shapes={"image": (1, 3, 512, 512)})

- One converter per ONNX op (`converters`, a table op type -> implementation per opset where the definition
  changed), opsets 7 to the newest the installed onnx knows. Each maps the node onto registry ops computing the
  same function, or refuses it with the reason; a refused node is never approximated.
- Shape computations (`Shape -> Gather -> Unsqueeze -> Concat` and the like, as exporters emit for a flatten or
  a resize to a size) are folded to constants (`folding`), so the flatten or resize they describe converts.
- Names are kept: graph inputs and outputs keep theirs, each node of ours is named after the ONNX node (or its
  output), and PyTorch's scoped names (`/layer1/layer1.0/conv1/Conv`) set the block a node belongs to, so
  `summary` and `render` read like the source model.
- Every shape is checked against ONNX's own shape inference.
- Inputs with a symbolic batch axis import at batch 1 (the batch is a compile parameter: `--batch`); any other
  symbolic dimension needs `input_shapes` (`--input-shape name=1x3x224x224`).
- Everything that cannot be imported is reported in one error: op types without a converter (with counts and
  node names) and each node a converter refused, with its reason.

`frontends.onnx.backend` makes cnncomp an `onnx.backend.base.Backend`, on which ONNX's own conformance tests run
(tests/frontends/test_onnx_backend.py).

onnx is an optional dependency (`pip install 'cnncomp[onnx]'`), imported only when a model is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnncomp.errors import ModelLoadError
from cnncomp.ir import Graph
from frontends.onnx.converters import supported_ops
from frontends.onnx.importer import Importer, onnx_module, read_model

__all__ = ["import_model", "load", "supported_ops"]


def import_model(model: Any, name: str | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 source: str = "<onnx model>", input_values: Mapping[str, np.ndarray] | None = None) -> Graph:
    """An `onnx.ModelProto` as a Graph (named `name`, else the ONNX graph's name); `source` names it in errors.
    `input_values` gives graph inputs' values, for a model that takes its weights as inputs (as ONNX's node tests
    do): integer inputs and inputs of fewer than two axes become constants; a converter needing a constant where
    the model reads another input (a Conv's weight) takes its value, and the input is dropped if nothing else
    reads it."""
    onnx = onnx_module()
    if getattr(model, "functions", None):
        import onnx.inliner

        model = onnx.inliner.inline_local_functions(model)
    graph_name = name or model.graph.name or "model"
    return Importer(model, graph_name, source, input_shapes, onnx, input_values).run()


def load(path: str | Path, input_shapes: Mapping[str, Sequence[int]] | None = None, **params: Any) -> Graph:
    """The frontend interface: an `.onnx` file as a Graph named after the file. `input_shapes` gives inputs'
    full shapes (batch included), needed for symbolic dimensions other than the batch."""
    path = Path(path)
    if params:
        raise ModelLoadError(f"{path}: an ONNX model takes no parameters (got {', '.join(sorted(params))})")
    return import_model(read_model(path), path.stem, input_shapes, str(path))
