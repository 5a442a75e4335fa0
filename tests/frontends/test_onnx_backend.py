"""ONNX's own backend conformance tests (`onnx.backend.test.BackendTest`) on cnncomp, as every ONNX backend runs
them: the node tests of every op type the importer claims (a converter in `converters`, a folder in `folding`),
including the `_expanded` variants of those tests (the op written as a function of other ops). Each either
passes, with ONNX's tolerances, or is an expected refusal below, with its reason, and refuses with cnncomp's
one-line error. A test that now passes must leave the list. Zero wrong answers, zero tracebacks.

All of them run on the numpy reference backend (seconds); one passing test per op type runs on numba-cpu, and
all the passing ones in the slow suite. Folders compute only constants (shape computations), which a node test
never feeds them, so they are also checked directly on the node tests' data.
"""

import re
import warnings

import numpy as np
import onnx
import onnx.backend.test
import pytest
from onnx.backend.test.loader import load_model_tests

from cnncomp.errors import CnnCompError
from frontends.onnx import supported_ops
from frontends.onnx.backend import CnnCompBackend, ReferenceBackend
from frontends.onnx.folding import FOLDERS
from frontends.onnx.graph import OnnxNode, Unsupported

with warnings.catch_warnings():  # ONNX's generators of its test data warn about the casts they try
    warnings.simplefilter("ignore")
    NODE_TESTS = {case.name: case for case in load_model_tests(kind="node")}
CLAIMED = set(supported_ops()) | set(FOLDERS)


def op_type(name):
    """The op a node test tests: its one node's, or for `<test>_expanded[_verN]` that of `<test>`."""
    nodes = NODE_TESTS[name].model.graph.node
    if len(nodes) == 1:
        return nodes[0].op_type
    base = name.split("_expanded")[0]
    if "_expanded" in name and base in NODE_TESTS and len(NODE_TESTS[base].model.graph.node) == 1:
        return NODE_TESTS[base].model.graph.node[0].op_type
    return None


SELECTED = sorted(name for name in NODE_TESTS if op_type(name) in CLAIMED)

# Reasons, each shared by many tests.
CONSTANTS_ONLY = ("its inputs are integer (or string, boolean) tensors or have fewer than two axes, which cnncomp "
                  "takes as constants: the output is a constant, not a tensor of the graph")
SMALL_INPUT = ("an input of fewer than two axes or of an integer type used as a tensor: cnncomp computes float32 "
               "tensors with a batch axis and at least one more")
FOLDED_ONLY = ("cnncomp folds this op on constants only (shape computations); the node test feeds it a computed "
               "tensor")
NOT_NCHW = "a tensor of another rank than NCHW (or N x features), or an op along an axis cnncomp does not compute"
EXOTIC_CAST = "a Cast from or to bfloat16, float8, 4- or 2-bit types, or of a float32 tensor: cnncomp computes float32"
CASTLIKE = "the expansion uses CastLike, which the importer does not claim"
LOOP = "the expansion uses Loop, which the importer does not claim"

EXPECTED_REFUSALS = {
    # Inputs cnncomp cannot take as graph tensors.
    r"^test_(add|sub|mul|div|greater|less|equal)_(u?int\d+(_trunc)?|example|string.*)$": CONSTANTS_ONLY,
    r"^test_(max|min|mod)_": CONSTANTS_ONLY,
    r"^test_(ceil|exp|floor|neg|reciprocal|sigmoid|sqrt|tanh)_example$": CONSTANTS_ONLY,
    r"^test_pow_(bcast_scalar|example|types_.*)$": CONSTANTS_ONLY,
    r"^test_(constant|constantofshape_.*|shape.*|size.*|gather_negative_indices|where_long_example)$": CONSTANTS_ONLY,
    r"^test_range_(bfloat16|float16|float|int32)_type_\w+_delta$": CONSTANTS_ONLY,
    r"^test_cast(like)?_(DOUBLE_to_FLOAT|DOUBLE_to_FLOAT16|FLOAT16_to_DOUBLE|FLOAT16_to_FLOAT)(_expanded)?$":
        CONSTANTS_ONLY,
    r"^test_concat_1d_": CONSTANTS_ONLY,
    r"^test_clip_(example|inbounds|outbounds|splitbounds|min_greater_than_max|default_inbounds|"
    r"default_int8_inbounds|default_int8_max|default_int8_min)_expanded$": CONSTANTS_ONLY,
    r"^test_split_(1d_uneven_split|equal_parts_1d|equal_parts_default_axis|variable_parts_1d|"
    r"variable_parts_default_axis|zero_size_splits)_opset1[38]$": CONSTANTS_ONLY,
    r"^test_not_\dd$": "opset 1 (cnncomp imports opsets 7 and later)",
    r"^test_identity_(opt|sequence)$": "an optional or a sequence, not a tensor",
    r"^test_clip_(default_inbounds|default_int8_inbounds|default_int8_max|default_int8_min|example|inbounds|"
    r"outbounds|splitbounds|min_greater_than_max)$": SMALL_INPUT,
    r"^test_(dropout_default_old|hardsigmoid_example|leakyrelu_example|swish|matmul_1d_1d|matmul_1d_3d|"
    r"sum_example|sum_one_input|sum_two_inputs|maxpool_2d_uint8|edge_pad|reflect_pad|wrap_pad)$": SMALL_INPUT,
    r"^test_reduce_(max|min|prod|sum)_empty_set|^test_reduce_sum_empty_set_non_reduced_axis_zero$|"
    r"^test_reshape_allowzero_reordered$": "an input with a zero-length axis (cnncomp's dimensions are positive)",
    # Folded ops fed computed tensors.
    r"^test_(abs|ceil|exp|floor|neg|reciprocal|sqrt|gather_0|gather_1|gather_2d_indices|expand_dim_\w+|greater|"
    r"greater_bcast|less|less_bcast|equal|equal_bcast|pow|pow_bcast_array|where_example|transpose_.*|unsqueeze_.*)$":
        FOLDED_ONLY,
    r"^test_reduce_(min|prod|sum)_": FOLDED_ONLY,
    r"^test_clip_(default_max|default_min|)_?expanded$": FOLDED_ONLY + " (Less and Where)",
    # Shapes and axes outside NCHW.
    r"^test_(average|max)pool_(1d|3d)_": NOT_NCHW,
    r"^test_convtranspose_(1d|3d)$": NOT_NCHW,
    r"^test_concat_(2d_axis_0|2d_axis_negative_2|3d_axis_0|3d_axis_negative_3)$": NOT_NCHW + " (the batch axis)",
    r"^test_(add|sub|mul|div)_bcast$": NOT_NCHW + " (a constant per last-axis element of a 3-D tensor)",
    r"^test_(sub|div)$": NOT_NCHW + " (3-D tensors; a Div of two computed tensors)",
    r"^test_(hardsigmoid|hardsigmoid_default|hardswish_expanded)$": NOT_NCHW + " (3-D tensors)",
    r"^test_flatten_(axis0|axis2|axis3|negative_axis1|negative_axis2|negative_axis4)$":
        "a flatten at another axis than 1 (cnncomp's tensors are NCHW or N x features)",
    r"^test_reshape_(extended_dims|negative_dim|negative_extended_dims|one_dim|reordered_all_dims|"
    r"reordered_last_dims|zero_and_negative_dim|zero_dim)$": "a reshape that is not a flatten",
    r"^test_squeeze(_negative_axes)?$": "a squeeze that is not a flatten",
    r"^test_reduce_(max|mean)_": "a reduction over other axes than H and W of an NCHW tensor",
    r"^test_softmax_.*_expanded(_ver18)?$": "the expansion reduces along one axis of a 2-D or 3-D tensor",
    r"^test_softmax_axis_0$": "a softmax along the batch axis",
    r"^test_slice(|_neg_steps)$": "a slice along the batch axis",
    r"^test_slice_(default_axes|default_steps|negative_axes)$": "a slice along the last axis of a 3-D tensor",
    r"^test_slice_start_out_of_bounds$": "an empty slice (cnncomp's dimensions are positive)",
    r"^test_matmul_(3d|4d|4d_1d|bcast)$": "a batched matrix product (cnncomp's dense layer takes a matrix)",
    r"^test_gemm_(all_attributes|transposeA)$": "a Gemm with transA=1",
    r"^test_gemm_default_matrix_bias$": "a Gemm whose C is a matrix, not one bias per output",
    r"^test_prelu_(broadcast|example)$": "a PRelu slope per element (cnncomp's leaky_relu has one slope)",
    # Casts: cnncomp computes float32; exotic types are refused, not folded approximately.
    r"^test_cast(like)?_(no_saturate_|e8m0_)?\w*(BFLOAT16|FLOAT8\w*|FLOAT4E2M1|U?INT[24])\w*$": EXOTIC_CAST,
    r"^test_cast(like)?_FLOAT_to_(DOUBLE|FLOAT16)(_expanded)?$": EXOTIC_CAST,
    # Attributes cnncomp's ops do not have.
    r"^test_(average|max)pool_2d_pads(_count_include_pad)?$":
        "padding larger than half the kernel (a window wholly in the padding)",
    r"^test_averagepool_2d_dilations$": "an AveragePool with dilations",
    r"^test_(averagepool_2d_ceil_last_window_starts_on_pad|maxpool_2d_ceil_output_size_reduce_by_one)$":
        "a ceil-mode last window that starts in the padding (cnncomp, as PyTorch, drops it)",
    r"^test_maxpool_with_argmax_2d_precomputed_pads$": "MaxPool's flat indices as a graph output",
    r"^test_maxpool_with_argmax_2d_precomputed_strides$": "MaxPool indices in column-major order",
    r"^test_maxunpool_export_with(out)?_output_shape$": "MaxUnpool indices that no MaxPool of the graph computed",
    r"^test_batchnorm_\w+_training_mode$": "a BatchNormalization in training mode",
    r"^test_training_dropout": "a Dropout in training mode",
    r"^test_dropout_default_mask(_ratio)?$": "a Dropout whose mask is read",
    r"^test_clip$|^test_clip_default_max$": "a Clip to other bounds than [0, 6] or [0, inf)",
    r"^test_constant_pad(_axes|_negative_axes)?$": "a Pad with another constant than zero",
    r"^test_convtranspose_output_shape$": "a ConvTranspose output_shape larger than its full output",
    r"^test_resize_\w*antialias$": "an antialiased downsampling",
    r"^test_resize_tf_crop_and_resize": "a crop and resize",
    r"^test_resize_\w*_not_(larger|smaller)$": "keep_aspect_ratio_policy other than stretch",
    r"^test_resize_downsample_scales_(linear|cubic)_align_corners$":
        "align_corners with a scale giving no whole length: the standard and ONNX Runtime disagree (onnx/onnx#2462)",
    r"^test_resize_(downsample_scales_nearest|downsample_sizes_nearest|upsample_sizes_nearest_ceil_half_pixel|"
    r"upsample_sizes_nearest_floor_align_corners|upsample_sizes_nearest_round_prefer_ceil_asymmetric|"
    r"downsample_sizes_linear_pytorch_half_pixel|\w+_half_pixel_symmetric|\w+_cubic_A_n0p5_exclude_outside|"
    r"upsample_scales_cubic_asymmetric)$": "an interpolation weighing other pixels than cnncomp's upsample",
    r"^test_(hardsigmoid\w*_expanded_ver18|leakyrelu\w*_expanded|prelu\w*_expanded|swish_expanded|"
    r"relu_expanded_ver18)$": CASTLIKE,
    r"^test_range_\w+_expanded$": LOOP,
    r"^test_gelu_default_\d$": "ONNX's default Gelu is the exact one (erf); cnncomp's gelu is the tanh approximation",
    r"^test_gelu_\w+_expanded$": CASTLIKE,
    r"^test_gelu_tanh_1$": SMALL_INPUT,
}


def expected_refusal(name):
    return next((reason for pattern, reason in EXPECTED_REFUSALS.items() if re.search(pattern, name)), None)


def node_test_cases(backend, names):
    """BackendTest's node test case class for `backend`, its tests restricted to `names` (on the CPU)."""
    runner = onnx.backend.test.BackendTest(backend, __name__)
    runner.include(rf"^({'|'.join(map(re.escape, names))})_cpu$")
    cases = runner.test_cases["OnnxBackendNodeModelTest"]
    cases.__test__ = False  # run through the tests below, not collected as a unittest class of its own
    return cases


def run_node_test(cases, name):
    method = f"{name}_cpu"
    run = getattr(cases(method), method)
    reason = expected_refusal(name)
    if reason is None:
        run()  # BackendTest's own check: prepare, run, compare with ONNX's expected outputs and tolerances
        return
    try:
        run()
    except CnnCompError as exc:
        assert "\n" not in str(exc), str(exc)
    else:
        pytest.fail(f"{name} now passes: remove it from the expected refusals ({reason})")


PASSING = [name for name in SELECTED if expected_refusal(name) is None]
# One passing test per op type: the numba-cpu kernels of every op the node tests reach, compiled once each.
NUMBA_SUBSET = sorted({op_type(name): name for name in reversed(PASSING)}.values())
REFERENCE_CASES = node_test_cases(ReferenceBackend, SELECTED)
NUMBA_CASES = node_test_cases(CnnCompBackend, PASSING)


@pytest.mark.parametrize("name", SELECTED)
def test_node_on_reference_backend(name):
    run_node_test(REFERENCE_CASES, name)


@pytest.mark.parametrize("name", NUMBA_SUBSET)
def test_node_on_numba_cpu(name):
    run_node_test(NUMBA_CASES, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(PASSING) - set(NUMBA_SUBSET)))
def test_every_passing_node_on_numba_cpu(name):
    run_node_test(NUMBA_CASES, name)


def test_every_expected_refusal_names_a_selected_test():
    stale = [pattern for pattern in EXPECTED_REFUSALS if not any(re.search(pattern, name) for name in SELECTED)]
    assert not stale
    assert {op_type(name) for name in SELECTED} == CLAIMED, "a claimed op type without node tests"


def _array(value):
    return onnx.numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


FOLDED = sorted(name for name in SELECTED if len(NODE_TESTS[name].model.graph.node) == 1
                and op_type(name) in FOLDERS and all(i.type.HasField("tensor_type")
                                                     for i in NODE_TESTS[name].model.graph.input))


@pytest.mark.parametrize("name", FOLDED)
def test_folder_on_the_node_test_data(name):
    """The folder of the op on the node test's inputs, as constants: ONNX's expected outputs, or Unsupported."""
    case = NODE_TESTS[name]
    node = OnnxNode.from_proto(case.model.graph.node[0], onnx)
    opset = next(o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx"))
    names = [i.name for i in case.model.graph.input]
    for inputs, expected in case.data_sets:
        values = dict(zip(names, map(_array, inputs), strict=True))
        try:
            results = FOLDERS[node.op_type](node, [values.get(n) if n else None for n in node.inputs], opset)
        except Unsupported as exc:
            assert "\n" not in str(exc)
            return
        for result, want in zip(results, map(_array, expected), strict=True):
            result = np.asarray(result)
            assert result.shape == want.shape and result.dtype == want.dtype, name
            if want.dtype.kind in "fc":
                np.testing.assert_allclose(result, want, rtol=case.rtol, atol=case.atol)
            else:
                np.testing.assert_array_equal(result, want)


def test_weights_given_as_inputs_are_constants_and_unknown_names_are_one_line():
    from onnx import TensorProto, helper

    from cnncomp.errors import ModelLoadError
    from frontends.onnx import import_model

    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5]),
                                            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 5, 5), np.float32), rng.standard_normal((3, 2, 3, 3), np.float32)
    imported = import_model(model, input_values={"x": x, "w": w})
    assert [n.name for n in imported.inputs] == ["x"]  # the weight became the conv's parameter
    (y,) = ReferenceBackend.run_model(model, {"x": x, "w": w})
    assert y.shape == (1, 3, 3, 3)
    with pytest.raises(ModelLoadError, match="a value is given for 'b', which is no input of the model"):
        import_model(model, input_values={"b": w})
