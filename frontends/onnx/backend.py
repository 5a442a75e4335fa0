"""cnncomp as an ONNX backend (`onnx.backend.base.Backend`), so ONNX's own conformance tests run on it:

    from frontends.onnx.backend import CnnCompBackend
    outputs = CnnCompBackend.prepare(model).run([x, w])       # or CnnCompBackend.run_model(model, [x, w])

`prepare` checks the model; the rep imports it with our importer and compiles it for `target` (a cnncomp
backend's name: numba-cpu, as the API, unless a subclass says otherwise) when it sees the inputs. A cnncomp graph
holds its weights as parameters and its shapes statically, while ONNX's node tests give weights, shapes and scales
as inputs: the importer takes those as constants with the values given (see `import_model`'s `input_values`), so
each run imports and compiles again. This is the conformance harness, not the way to serve a model (`cnncomp
compile` is). What cnncomp cannot compute exactly raises the importer's one-line `ModelLoadError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from onnx.backend.base import Backend, BackendRep

from frontends.onnx import import_model


class CnnCompRep(BackendRep):
    """A checked model, imported and compiled for `target` at each run with the inputs' values."""

    def __init__(self, model: Any, target: str) -> None:
        self.model = model
        self.target = target
        initializers = {tensor.name for tensor in model.graph.initializer}
        self.input_names = [info.name for info in model.graph.input if info.name not in initializers]

    def run(self, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray], **kwargs: Any) -> tuple[np.ndarray, ...]:
        """The model's outputs, in its order, for inputs in the order of its (non-initializer) inputs or by name."""
        import cnncomp  # the API compiles, as for any user; imported here so that the frontend loads no pass

        values = dict(inputs) if isinstance(inputs, Mapping) else dict(zip(self.input_names, inputs, strict=True))
        graph = import_model(self.model, input_values=values)
        compiled = cnncomp.compile(graph, backend=self.target, batch=None)
        outputs = compiled.run({node.name: values[node.name] for node in compiled.graph.inputs})
        return tuple(outputs[name] for name in graph.outputs)


class CnnCompBackend(Backend):
    """ONNX's backend interface over the importer and a cnncomp backend (`target`) on the CPU."""

    target = "numba-cpu"

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> CnnCompRep:
        super().prepare(model, device, **kwargs)  # ONNX's model checker
        return CnnCompRep(model, cls.target)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


class ReferenceBackend(CnnCompBackend):
    """The same on the numpy reference backend (the oracle; no kernels to compile)."""

    target = "reference"
