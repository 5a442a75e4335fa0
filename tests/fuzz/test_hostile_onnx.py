"""Hostile ONNX files for the importer (frontends/onnx): named attacks, random byte mutations and random structural
mutations of exported models (zoo models and fuzz graphs, `frontends.onnx.export`). Each runs in a sandbox child
under a time limit; the only outcomes allowed are a graph or a one-line `CnnCompError` (ModelLoadError): no other
exception, no hang, no dead interpreter, no file read outside the model's folder."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from tests.fuzz.hostile import judge_outcome, mutate_bytes
from tests.fuzz.sandbox import Sandbox

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SECONDS = 60
MUTATIONS = 25
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)


def model(nodes, initializers=(), inputs=(X,), outputs=(Y,), opset=17):
    graph = helper.make_graph(list(nodes), "hostile", list(inputs), list(outputs), list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def ints(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def external(name, location, length=None):
    tensor = numpy_helper.from_array(np.zeros(4, np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    if length is not None:
        entry = tensor.external_data.add()
        entry.key, entry.value = "length", str(length)
    return tensor


def nested_ifs(depth):
    leaf = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "leaf", [], [Y])
    branch = leaf
    for _ in range(depth):
        node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=leaf)
        branch = helper.make_graph([node], "level", [], [Y])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return model(branch.node, [cond])


def attacks(folder: Path):
    outside = folder.parent / f"{folder.name}-outside.bin"
    outside.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (folder / "link.bin").symlink_to(outside)
    add_w = [helper.make_node("Add", ["x", "w"], ["y"])]
    conv = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[10**9, 10**9])
    huge_w = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    huge_w.dims[:] = [2**31, 2**31]  # raw data of 16 bytes claiming 2**62 floats
    return {
        "external_data_outside_the_folder": model(add_w, [external("w", f"../{outside.name}")]),
        "external_data_at_an_absolute_path": model(add_w, [external("w", str(outside))]),
        "external_data_through_a_symlink_out": model(add_w, [external("w", "link.bin")]),
        "external_data_longer_than_its_file": model(add_w, [external("w", "link.bin", length=1 << 40)]),
        "constant_of_shape_of_3_tib": model([helper.make_node("ConstantOfShape", ["s"], ["c"]),
                                             helper.make_node("Add", ["x", "c"], ["y"])],
                                            [ints("s", [100000, 100000, 100])]),
        "expand_to_10e12_elements": model([helper.make_node("Expand", ["one", "s"], ["c"]),
                                           helper.make_node("Add", ["x", "c"], ["y"])],
                                          [numpy_helper.from_array(np.ones(1, np.float32), "one"),
                                           ints("s", [10**6, 10**6])]),
        "range_of_10e12_elements": model([helper.make_node("Range", ["a", "b", "c"], ["r"]),
                                          helper.make_node("Add", ["x", "r"], ["y"])],
                                         [ints("a", 0), ints("b", 10**12), ints("c", 1)]),
        "range_with_zero_step": model([helper.make_node("Range", ["a", "b", "c"], ["r"]),
                                       helper.make_node("Add", ["x", "r"], ["y"])],
                                      [ints("a", 0), ints("b", 10), ints("c", 0)]),
        "outer_product_of_two_shape_vectors": model(
            [helper.make_node("Add", ["u", "v"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])],
            [ints("u", np.zeros((100000, 1))), ints("v", np.zeros((1, 100000)))]),
        "resize_to_a_million_squared": model(
            [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest")],
            [ints("sizes", [1, 3, 10**6, 10**6])]),
        "conv_kernel_of_a_billion": model([conv], [numpy_helper.from_array(np.zeros((1, 3, 1, 1), np.float32),
                                                                         "w")]),
        "initializer_dims_of_2_to_the_62": model(add_w, [huge_w]),
        "input_of_a_billion_channels": model([helper.make_node("Relu", ["x"], ["y"])],
                                             inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   [1, 10**9, 8, 8])]),
        "input_with_a_zero_dimension": model([helper.make_node("Relu", ["x"], ["y"])],
                                             inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   [1, 0, 8, 8])]),
        "input_with_a_negative_dimension": model([helper.make_node("Relu", ["x"], ["y"])],
                                                 inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                       [1, -3, 8, 8])]),
        "reshape_to_a_huge_shape": model([helper.make_node("Reshape", ["x", "s"], ["y"])],
                                         [ints("s", [10**9, 10**9])]),
        "a_cycle_of_two_nodes": model([helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                                       helper.make_node("Add", ["x", "b"], ["y"])]),
        "a_node_reading_an_undefined_value": model([helper.make_node("Add", ["x", "nowhere"], ["y"])]),
        "two_nodes_writing_one_value": model([helper.make_node("Relu", ["x"], ["y"]),
                                              helper.make_node("Sigmoid", ["x"], ["y"])]),
        "ifs_nested_30_deep": nested_ifs(30),
        "opset_1": model([helper.make_node("Relu", ["x"], ["y"])], opset=1),
        "opset_999": model([helper.make_node("Relu", ["x"], ["y"])], opset=999),
        "unknown_domain": model([helper.make_node("Relu", ["x"], ["y"], domain="evil.example")]),
        "string_initializer": model(add_w, [helper.make_tensor("w", TensorProto.STRING, [1], [b"hello"])]),
        "no_graph": helper.make_model(helper.make_graph([], "empty", [], [])),
        "fifty_thousand_identities": model([helper.make_node("Identity", ["x" if i == 0 else f"v{i}"],
                                                             [f"v{i + 1}" if i < 49999 else "y"])
                                            for i in range(50000)]),
    }


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(timeout=SECONDS, env={"CNNCOMP_MEMORY_LIMIT": "512MiB"}) as box:
        yield box


@pytest.fixture(scope="module")
def attack_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attacks")
    files = {}
    for name, proto in attacks(folder).items():
        files[name] = folder / f"{name}.onnx"
        files[name].write_bytes(proto.SerializeToString())
    return files


def _attack_names():
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "names"
        folder.mkdir()
        return list(attacks(folder))


@pytest.mark.parametrize("name", _attack_names())
def test_attack_ends_in_a_graph_or_a_one_line_error(sandbox, attack_files, name):
    outcome = sandbox.run("tests.fuzz.hostile:load_onnx", [str(attack_files[name])])
    problem = judge_outcome(outcome)
    assert problem is None, problem
    if name.startswith("external_data"):  # nothing outside the model's folder is read
        assert outcome.status == "error", f"{name} loaded"


# ----- mutations of exported models ------------------------------------------------------------------------------
def source_models() -> dict[str, bytes]:
    """ONNX files to mutate: zoo models and fuzz graphs, exported by cnncomp."""
    from hypothesis import HealthCheck, Phase, given, settings

    from cnncomp.driver import load_model
    from frontends.onnx.export import to_onnx
    from tests.fuzz.graphs import WIDE, fuzz_cases

    sources = {name: to_onnx(load_model(name, batch=1)).SerializeToString()
               for name in ("lenet5", "inception_naive", "sharpen")}
    cases = []

    @settings(max_examples=4, database=None, derandomize=True, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzz_cases(WIDE))
    def collect(case):
        if len(case.graph) >= 6:
            cases.append(case)

    collect()
    for index, case in enumerate(cases):
        sources[f"fuzz{index}"] = to_onnx(case.graph).SerializeToString()
    return sources


SOURCES = source_models()

EXTREMES = [0, -1, 1, 2, 3, 7, 2**31 - 1, -(2**31), 10**9, 2**62]
OP_TYPES = ["Conv", "Relu", "MaxPool", "Gemm", "Reshape", "Concat", "Add", "Resize", "Pad", "Slice", "Softmax",
            "BatchNormalization", "ConvTranspose", "Flatten", "Transpose", "Evil", "If", "Loop"]


def mutate_proto(data: bytes, rng: random.Random) -> bytes:
    """One structural edit: an attribute, op type, operand, node order, initializer shape or type, input shape or
    opset changed to something unusual."""
    proto = onnx.ModelProto()
    proto.ParseFromString(data)
    graph = proto.graph
    choice = rng.randrange(9)
    nodes = list(graph.node)
    if choice == 0 and nodes:
        node = rng.choice(nodes)
        for attribute in node.attribute:
            if attribute.ints:
                attribute.ints[rng.randrange(len(attribute.ints))] = rng.choice(EXTREMES)
            elif attribute.type == onnx.AttributeProto.INT:
                attribute.i = rng.choice(EXTREMES)
            elif attribute.type == onnx.AttributeProto.FLOAT:
                attribute.f = rng.choice([0.0, -1.0, float("inf"), float("nan"), 1e30])
    elif choice == 1 and nodes:
        rng.choice(nodes).op_type = rng.choice(OP_TYPES)
    elif choice == 2 and nodes:
        node = rng.choice(nodes)
        if node.input:
            names = [v for n in nodes for v in n.output] + ["", "undefined"]
            node.input[rng.randrange(len(node.input))] = rng.choice(names)
    elif choice == 3 and len(nodes) > 1:
        order = nodes[:]
        rng.shuffle(order)
        del graph.node[:]
        graph.node.extend(order)
    elif choice == 4 and nodes:
        del graph.node[rng.randrange(len(nodes))]
    elif choice == 5 and graph.initializer:
        tensor = rng.choice(list(graph.initializer))
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice(EXTREMES)
    elif choice == 6 and graph.initializer:
        rng.choice(list(graph.initializer)).data_type = rng.choice([TensorProto.INT64, TensorProto.DOUBLE,
                                                                    TensorProto.STRING, TensorProto.BOOL, 0, 99])
    elif choice == 7 and graph.input:
        dims = graph.input[0].type.tensor_type.shape.dim
        if dims:
            dim = dims[rng.randrange(len(dims))]
            if rng.random() < 0.3:
                dim.dim_param = "n"
            else:
                dim.dim_value = rng.choice([0, 1, 2**20, 10**9])
    else:
        proto.opset_import[0].version = rng.choice([1, 6, 7, 11, 13, 18, 99])
    return proto.SerializeToString()


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("kind", ["bytes", "structure"])
def test_mutated_export_ends_in_a_graph_or_a_one_line_error(sandbox, tmp_path, source, kind):
    rng = random.Random(f"{source}-{kind}")
    failures = []
    for index in range(MUTATIONS):
        data = mutate_bytes(SOURCES[source], rng) if kind == "bytes" else mutate_proto(SOURCES[source], rng)
        path = tmp_path / f"{source}_{index}.onnx"
        path.write_bytes(data)
        problem = judge_outcome(sandbox.run("tests.fuzz.hostile:load_onnx", [str(path)]))
        if problem is not None:
            failures.append(f"mutation {index} ({path}): {problem}")
        else:
            path.unlink()
    assert not failures, "\n\n".join(failures[:3])


def test_unmutated_exports_load(sandbox, tmp_path):
    """Zoo exports import; a fuzz graph's export may use ONNX ops the importer refuses (ScatterElements), in one
    line."""
    for source, data in SOURCES.items():
        path = tmp_path / f"{source}.onnx"
        path.write_bytes(data)
        outcome = sandbox.run("tests.fuzz.hostile:load_onnx", [str(path)])
        assert judge_outcome(outcome) is None
        assert outcome.status == "ok" or source.startswith("fuzz"), f"{source}: {outcome.describe()}"
