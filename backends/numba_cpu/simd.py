"""Sixteen-float vectors for Numba kernels: a type, the few operations a GEMM micro-kernel needs, and the strided
row copies that gather a convolution's inputs (im2col, phase planes).

LLVM's loop vectorizer follows the CPU's preferred vector width (256 bits on Intel server cores with AVX-512), but
vectors written out in the IR are lowered at their own width: these are one zmm register each where the CPU has
AVX-512, two ymm registers on AVX2. Indices are flat offsets, in elements, from the first element of the array (or
view) or pointer given, with no bounds check and no negative-index wrap-around: the caller keeps them in range.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

LANES = 16
_FLOAT = ir.FloatType()
_VECTOR = ir.VectorType(_FLOAT, LANES)
_LANE_INDEX = ir.VectorType(ir.IntType(32), LANES)
_MASK = ir.VectorType(ir.IntType(1), LANES)


class Float32x16(types.Type):
    def __init__(self) -> None:
        super().__init__(name="float32x16")


float32x16 = Float32x16()


@register_model(Float32x16)
class _Float32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, _VECTOR)


class LaneMask(types.Type):
    def __init__(self) -> None:
        super().__init__(name="lane_mask16")


lane_mask16 = LaneMask()


@register_model(LaneMask)
class _LaneMaskModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, _MASK)


def _float32_array(array) -> bool:
    """A float32 array, or a pointer to float32."""
    return ((isinstance(array, types.Array) and array.dtype == types.float32)
            or (isinstance(array, types.CPointer) and array.dtype == types.float32))


def _address(context, builder, array_type, array, index):
    if isinstance(array_type, types.CPointer):
        return builder.gep(array, [index])
    data = context.make_array(array_type)(context, builder, value=array).data
    return builder.gep(data, [index])


def _vector_address(context, builder, array_type, array, index):
    return builder.bitcast(_address(context, builder, array_type, array, index), _VECTOR.as_pointer())


def _splat(builder, value):
    one = builder.insert_element(ir.Constant(_VECTOR, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(_VECTOR, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


def _first_lanes(context, builder, count_type, count):
    """The mask of lanes 0 .. count-1 (count: any integer in int32's range; 32-bit lanes make one compare)."""
    count = context.cast(builder, count, count_type, types.int32)
    splat = builder.insert_element(ir.Constant(_LANE_INDEX, ir.Undefined), count, ir.Constant(ir.IntType(32), 0))
    splat = builder.shuffle_vector(splat, ir.Constant(_LANE_INDEX, ir.Undefined),
                                   ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))
    return builder.icmp_signed("<", ir.Constant(_LANE_INDEX, list(range(LANES))), splat)


def _masked_load(context, builder, signature, args, mask, passthrough):
    """The lanes of array.flat[index: index + 16] (args[0], args[1]) that `mask` holds, `passthrough` in the
    others; nothing read for them."""
    masked_load = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_VECTOR, [_VECTOR.as_pointer(), ir.IntType(32), _MASK, _VECTOR]),
        "llvm.masked.load.v16f32.p0v16f32")
    return builder.call(masked_load, [_vector_address(context, builder, signature.args[0], args[0], args[1]),
                                      ir.Constant(ir.IntType(32), 4), mask, passthrough])


@intrinsic
def zeros(typingctx):
    """A vector of zeros."""
    def codegen(context, builder, signature, args):
        return ir.Constant(_VECTOR, [0.0] * LANES)
    return float32x16(), codegen


@intrinsic
def load(typingctx, array, index):
    """array.flat[index: index + 16] (float32 array or view)."""
    if not _float32_array(array):
        return None
    def codegen(context, builder, signature, args):
        return builder.load(_vector_address(context, builder, signature.args[0], *args), align=4)
    return float32x16(array, index), codegen


@intrinsic
def load_first(typingctx, array, index, count):
    """The first `count` (0 to 16) of array.flat[index: index + 16], zeros in the other lanes; reads nothing
    beyond them."""
    if not _float32_array(array):
        return None
    def codegen(context, builder, signature, args):
        mask = _first_lanes(context, builder, signature.args[2], args[2])
        return _masked_load(context, builder, signature, args, mask, ir.Constant(_VECTOR, [0.0] * LANES))
    return float32x16(array, index, count), codegen


def _lane_range(context, builder, lo_type, lo, hi_type, hi):
    """The mask of lanes lo .. hi-1."""
    above = _first_lanes(context, builder, lo_type, lo)
    below = _first_lanes(context, builder, hi_type, hi)
    return builder.and_(below, builder.not_(above))


@intrinsic
def load_range(typingctx, array, index, lo, hi, fill):
    """Lane l: array.flat[index + l] where lo <= l < hi, else `fill` (float32); reads nothing outside those lanes,
    so index + l may lie outside the array for the others (a row's padding)."""
    if not _float32_array(array) or fill != types.float32:
        return None
    def codegen(context, builder, signature, args):
        mask = _lane_range(context, builder, signature.args[2], args[2], signature.args[3], args[3])
        return _masked_load(context, builder, signature, args, mask, _splat(builder, args[4]))
    return float32x16(array, index, lo, hi, fill), codegen


@intrinsic
def lane_range(typingctx, lo, hi):
    """The mask of lanes lo .. hi-1, made once for many `load_masked` (a mask made per load cost more than the
    load)."""
    def codegen(context, builder, signature, args):
        return _lane_range(context, builder, signature.args[0], args[0], signature.args[1], args[1])
    return lane_mask16(lo, hi), codegen


@intrinsic
def load_masked(typingctx, array, index, mask, fill):
    """Lane l: array.flat[index + l] where `mask` (lane_range) holds lane l, else `fill` (float32); reads nothing
    for the other lanes."""
    if not _float32_array(array) or fill != types.float32 or mask != lane_mask16:
        return None
    def codegen(context, builder, signature, args):
        return _masked_load(context, builder, signature, args, args[2], _splat(builder, args[3]))
    return float32x16(array, index, mask, fill), codegen


@intrinsic
def store(typingctx, array, index, vector):
    """array.flat[index: index + 16] = vector."""
    if not _float32_array(array):
        return None
    def codegen(context, builder, signature, args):
        builder.store(args[2], _vector_address(context, builder, signature.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()
    return types.void(array, index, vector), codegen


@intrinsic
def store_first(typingctx, array, index, vector, count):
    """array.flat[index: index + count] = vector[:count], for count 0 to 16; writes nothing beyond."""
    if not _float32_array(array):
        return None
    def codegen(context, builder, signature, args):
        masked_store = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_VECTOR, _VECTOR.as_pointer(), ir.IntType(32), _MASK]),
            "llvm.masked.store.v16f32.p0v16f32")
        builder.call(masked_store, [args[2], _vector_address(context, builder, signature.args[0], args[0], args[1]),
                                    ir.Constant(ir.IntType(32), 4),
                                    _first_lanes(context, builder, signature.args[3], args[3])])
        return context.get_dummy_value()
    return types.void(array, index, vector, count), codegen


@intrinsic
def even_lanes(typingctx, a, b):
    """Lanes 0, 2, .., 14 of a, then those of b: every other float of the 32 that a and b hold."""
    def codegen(context, builder, signature, args):
        return builder.shuffle_vector(args[0], args[1],
                                      ir.Constant(ir.VectorType(ir.IntType(32), LANES), list(range(0, 2 * LANES, 2))))
    return float32x16(a, b), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Ask for the cache line of array.flat[index] ahead of its use (a hint: no fault, nothing read back)."""
    if not _float32_array(array):
        return None
    def codegen(context, builder, signature, args):
        address = builder.bitcast(_address(context, builder, signature.args[0], *args), ir.IntType(8).as_pointer())
        hint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), ir.IntType(32),
                                                            ir.IntType(32), ir.IntType(32)]), "llvm.prefetch.p0i8")
        # a read, kept in every level of the cache (locality 3), of data (cache type 1)
        builder.call(hint, [address, ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 3),
                            ir.Constant(ir.IntType(32), 1)])
        return context.get_dummy_value()
    return types.void(array, index), codegen


@intrinsic
def broadcast(typingctx, array, index):
    """array.flat[index] in every lane."""
    if not _float32_array(array):
        return None
    def codegen(context, builder, signature, args):
        return _splat(builder, builder.load(_address(context, builder, signature.args[0], *args), align=4))
    return float32x16(array, index), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c, lane by lane, rounded once."""
    def codegen(context, builder, signature, args):
        fused = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VECTOR, [_VECTOR] * 3),
                                               "llvm.fma.v16f32")
        return builder.call(fused, args)
    return float32x16(a, b, c), codegen


@intrinsic
def add(typingctx, a, b):
    """a + b, lane by lane."""
    def codegen(context, builder, signature, args):
        return builder.fadd(*args)
    return float32x16(a, b), codegen


@intrinsic
def mul(typingctx, a, b):
    """a * b, lane by lane."""
    def codegen(context, builder, signature, args):
        return builder.fmul(*args)
    return float32x16(a, b), codegen


@intrinsic
def splat(typingctx, value):
    """The float32 `value` in every lane."""
    if value != types.float32:
        return None
    def codegen(context, builder, signature, args):
        return _splat(builder, args[0])
    return float32x16(value), codegen


@intrinsic
def insert(typingctx, vector, lane, value):
    """vector with `value` (float32) in lane `lane`."""
    if value != types.float32:
        return None
    def codegen(context, builder, signature, args):
        lane = context.cast(builder, args[1], signature.args[1], types.int32)
        return builder.insert_element(args[0], args[2], lane)
    return float32x16(vector, lane, value), codegen


@intrinsic
def div(typingctx, a, b):
    """a / b, lane by lane (IEEE: x / 0 is inf or NaN)."""
    def codegen(context, builder, signature, args):
        return builder.fdiv(*args)
    return float32x16(a, b), codegen


def _constant(value: float) -> ir.Constant:
    return ir.Constant(_VECTOR, [value] * LANES)


@intrinsic
def exp(typingctx, x):
    """exp(x), lane by lane, as mathlib.fast_exp computes it (within 1e-7 relative): 2^n exp(r) with r = x - n ln 2
    in [-ln2/2, ln2/2], Cephes' degree-7 polynomial, 2^n from its exponent bits. NaN stays NaN; +inf gives inf; x
    below -87.3 gives exp(-87.3)."""
    def codegen(context, builder, signature, args):
        x = args[0]
        module = builder.module
        floor = cgutils.get_or_insert_function(module, ir.FunctionType(_VECTOR, [_VECTOR]), "llvm.floor.v16f32")
        low, high = _constant(-87.33655), _constant(88.72284)
        clamped = builder.select(builder.fcmp_ordered("<", x, low), low, x)
        clamped = builder.select(builder.fcmp_ordered(">", clamped, high), high, clamped)
        n = builder.call(floor, [builder.fadd(builder.fmul(clamped, _constant(1.44269504)), _constant(0.5))])
        r = builder.fsub(clamped, builder.fmul(n, _constant(0.693359375)))
        r = builder.fadd(r, builder.fmul(n, _constant(2.12194440e-4)))
        p = _constant(1.9875691500e-4)
        for coefficient in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
            p = builder.fadd(builder.fmul(p, r), _constant(coefficient))
        p = builder.fadd(builder.fadd(builder.fmul(builder.fmul(p, r), r), r), _constant(1.0))
        lanes32 = ir.VectorType(ir.IntType(32), LANES)
        bits = builder.shl(builder.add(builder.fptosi(n, lanes32), ir.Constant(lanes32, [127] * LANES)),
                           ir.Constant(lanes32, [23] * LANES))
        result = builder.fmul(p, builder.bitcast(bits, _VECTOR))
        return builder.select(builder.fcmp_unordered("uno", x, x), x, result)
    return float32x16(x), codegen


@intrinsic
def keep_max(typingctx, kept, value):
    """value where value > kept or value is NaN, else kept, lane by lane: numpy's max, in which NaN wins."""
    def codegen(context, builder, signature, args):
        kept, value = args
        take = builder.or_(builder.fcmp_ordered(">", value, kept), builder.fcmp_unordered("uno", value, value))
        return builder.select(take, value, kept)
    return float32x16(kept, value), codegen


@intrinsic
def replace_below(typingctx, a, limit, replacement):
    """replacement where a < limit, else a, lane by lane (an ordered comparison: NaN stays NaN)."""
    def codegen(context, builder, signature, args):
        return builder.select(builder.fcmp_ordered("<", args[0], args[1]), args[2], args[0])
    return float32x16(a, limit, replacement), codegen


@intrinsic
def replace_above(typingctx, a, limit, replacement):
    """replacement where a > limit, else a, lane by lane (an ordered comparison: NaN stays NaN)."""
    def codegen(context, builder, signature, args):
        return builder.select(builder.fcmp_ordered(">", args[0], args[1]), args[2], args[0])
    return float32x16(a, limit, replacement), codegen


@njit(nogil=True, cache=True, inline="always")
def _load_strided(src, start, stride, count):
    """src.flat[start + stride * l] for lanes l < count (1 to 16), zeros in the others; reads nothing beyond
    src.flat[start + stride * (count - 1)]. Strides 2 and 4 load the contiguous span and keep every other lane,
    once or twice."""
    if stride == 1:
        return load(src, start) if count >= 16 else load_first(src, start, count)
    span = stride * (count - 1) + 1
    if stride == 2:
        return even_lanes(load_first(src, start, min(16, span)), load_first(src, start + 16, max(0, span - 16)))
    low = even_lanes(load_first(src, start, min(16, span)), load_first(src, start + 16, max(0, min(16, span - 16))))
    high = even_lanes(load_first(src, start + 32, max(0, min(16, span - 32))),
                      load_first(src, start + 48, max(0, span - 48)))
    return even_lanes(low, high)


@njit(nogil=True, cache=True)
def copy_strided(src, start, stride, dst, dst_start, count):
    """dst[dst_start + l] = src[start + stride * l] for l < count, on 1-D views with unit stride (or pointers):
    vector loads and stores for strides 1, 2 and 4 (a stride-2 copy as a scalar loop took 2 to 3 cycles a float),
    a scalar loop for others."""
    if stride != 1 and stride != 2 and stride != 4:
        for lane in range(count):
            dst[dst_start + lane] = src[start + stride * lane]
        return
    for l0 in range(0, count, LANES):
        n = min(LANES, count - l0)
        v = _load_strided(src, start + stride * l0, stride, n)
        if n == LANES:
            store(dst, dst_start + l0, v)
        else:
            store_first(dst, dst_start + l0, v, n)


@njit(nogil=True, cache=True)
def fill(dst, start, count, value):
    """dst[start: start + count] = value (float32), on a 1-D view with unit stride (or a pointer)."""
    v = splat(value)
    for l0 in range(0, count, LANES):
        n = min(LANES, count - l0)
        if n == LANES:
            store(dst, start + l0, v)
        else:
            store_first(dst, start + l0, v, n)


@njit(nogil=True, cache=True, inline="always")
def _range_part(src, row, start, part, stride, lanes, w, fill):
    """Raw elements part * 16 .. part * 16 + 15 from src.flat[row + start:]: those of the window's lanes that
    lie in columns 0 .. w-1 of the row, `fill` for the others."""
    first = part * LANES
    lo = max(0, -(start + first))
    hi = min(LANES, w - (start + first), stride * (lanes - 1) + 1 - first)
    return load_range(src, row + start + first, lo, max(lo, hi), fill)


@njit(nogil=True, cache=True, inline="always")
def load_window(src, row, start, stride, lanes, w, fill):
    """Lane l < lanes: src.flat[row + start + stride * l] where start + stride * l lies in 0 .. w-1 (a row of w
    values from flat index `row`, unit stride), else `fill`; `fill` in lanes from `lanes` on. A window's taps
    along a row, with the row's padding; strides 2 and 4 load the span and keep every other lane, once or twice.
    The row is an offset, not a view: a view made per row costs calls that take longer than the loads."""
    if stride == 1:
        return _range_part(src, row, start, 0, 1, lanes, w, fill)
    if stride == 2:
        return even_lanes(_range_part(src, row, start, 0, 2, lanes, w, fill),
                          _range_part(src, row, start, 1, 2, lanes, w, fill))
    if stride == 4:
        return even_lanes(even_lanes(_range_part(src, row, start, 0, 4, lanes, w, fill),
                                     _range_part(src, row, start, 1, 4, lanes, w, fill)),
                          even_lanes(_range_part(src, row, start, 2, 4, lanes, w, fill),
                                     _range_part(src, row, start, 3, 4, lanes, w, fill)))
    return _gather_window(src, row, start, stride, lanes, w, fill)


@njit(nogil=True, cache=True)
def _gather_window(src, row, start, stride, lanes, w, fill):
    """load_window for strides other than 1, 2 and 4, lane by lane; not inlined (a 7x7 window's kernel inlined it
    28 times and took seconds more to compile)."""
    lo = min(lanes, max(0, -(start // stride)))
    hi = max(lo, min(lanes, (w - 1 - start) // stride + 1))
    v = splat(fill)
    for lane in range(lo, hi):
        v = insert(v, lane, src.flat[row + start + stride * lane])
    return v
