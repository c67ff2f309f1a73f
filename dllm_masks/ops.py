"""``priority_mask``: the public op, its ``torch.library`` schema, fake implementation and dispatch.

Layers (each with one job):

* :func:`priority_mask` (public) = :func:`normalize` (check the arguments, put them in the op's
  terms as :class:`OpArgs`) → :func:`kernel_for` (pick a backend) → :func:`wrap` (shape the
  outputs into a :class:`MaskedBatch`);
* ``torch.ops.dllm_masks.priority_mask`` is the op the dispatcher routes: CPU → C++
  (``dllm_masks._C``, registered with ``TORCH_LIBRARY_IMPL``), CUDA → Triton
  (``dllm_masks.triton_kernels``), anything else or a missing backend → the reference;
* :func:`dllm_masks.reference.priority_mask_ref` computes the oracle answer.
"""
from __future__ import annotations

import array
import functools
import importlib.util
import logging
import math
import os
import struct
from typing import NamedTuple, Optional, Union

import torch

from . import validation
from .reference import LOSS_WEIGHT_MODES, priority_mask_ref

__all__ = ["priority_mask", "MaskedBatch", "empty_masked_batch", "num_segments", "available_backends", "normalize",
           "wrap", "kernel_for", "check_out", "OpArgs", "Normalized", "OUT_NAMES"]

log = logging.getLogger("dllm_masks")

SCHEMA = (
    "priority_mask(Tensor input_ids, Tensor cu_seqlens, Tensor sigma, Tensor? priority, "
    "Tensor? maskable, Tensor? prompt_lens, Tensor? sample_ids, Tensor rng, float weight, "
    "int block_size, int num_segments, bool exact, bool complementary, int loss_weight_mode, "
    "int mask_token_id) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)

# The out-variant: the same arguments, then the five outputs as buffers it writes in place
# (flat and contiguous, shaped like the default overload's returns). It returns nothing, so
# torch.compile functionalizes it (auto_functionalized) and a CUDA graph sees static outputs.
OUT_NAMES = ("noisy", "masked", "labels", "loss_weight", "rates")
SCHEMA_OUT = SCHEMA.replace("priority_mask(", "priority_mask.out(").replace(
    ") -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    ", *, Tensor(a!) noisy, Tensor(b!) masked, Tensor(c!) labels, Tensor(d!) loss_weight, Tensor(e!) rates) -> ()")


def priority_mask_ref_out(*args, noisy, masked, labels, loss_weight, rates) -> None:
    """The reference behind ``dllm_masks::priority_mask.out``: computes the outputs, then copies
    them into the given buffers (the oracle is not allocation-free; the kernels are)."""
    for dst, src in zip((noisy, masked, labels, loss_weight, rates), priority_mask_ref(*args)):
        dst.copy_(src)


_lib = torch.library.Library("dllm_masks", "DEF")
_lib.define(SCHEMA)
_lib.define(SCHEMA_OUT)
# The reference serves every device that has no kernel of its own.
_lib.impl("priority_mask", priority_mask_ref, "CompositeExplicitAutograd")
_lib.impl("priority_mask.out", priority_mask_ref_out, "CompositeExplicitAutograd")


@torch.library.register_fake("dllm_masks::priority_mask")
def _priority_mask_fake(input_ids, cu_seqlens, sigma, priority, maskable, prompt_lens, sample_ids, rng, weight,
                        block_size, num_segments, exact, complementary, loss_weight_mode, mask_token_id):
    n = input_ids.numel() * (2 if complementary else 1)
    noisy = input_ids.new_empty(n)
    masked = input_ids.new_empty(n, dtype=torch.bool)
    labels = input_ids.new_empty(n, dtype=torch.int64)
    lw = input_ids.new_empty(n if loss_weight_mode else 0, dtype=torch.float32)
    rates = input_ids.new_empty((num_segments, 2), dtype=torch.float64)
    return noisy, masked, labels, lw, rates


@torch.library.register_fake("dllm_masks::priority_mask.out")
def _priority_mask_out_fake(*args, noisy, masked, labels, loss_weight, rates):
    return None


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------
_cpp = None
_cpp_error: Optional[str] = None
if importlib.util.find_spec("dllm_masks._C") is None:
    _cpp_error = "not built (installed with DLLM_MASKS_SKIP_CPP=1, or its build failed)"
else:
    try:  # the C++ extension registers its CPU kernel on import
        from . import _C as _cpp  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001 - importing never crashes; the reference serves instead
        _cpp_error = f"{type(e).__name__}: {e}"
if _cpp is None:
    log.debug("dllm_masks: C++ extension not loaded (%s); CPU tensors use the reference", _cpp_error)

_triton = None
_triton_weights = None  # the float32 importance-weights kernel (docs/importance.md)
_triton_error: Optional[str] = None


def _load_triton():
    """Import the Triton kernels (and register them for CUDA) on first need."""
    global _triton, _triton_weights, _triton_error
    if _triton is None and _triton_error is None:
        try:
            from .triton_kernels import importance as tw
            from .triton_kernels import priority_mask as tk

            # bool priority to tk's kernel, float32 importance weights to tw's
            _lib.impl("priority_mask", tw.priority_mask_cuda, "CUDA")
            _lib.impl("priority_mask.out", tw.priority_mask_cuda_out, "CUDA")
            _triton = tk
            _triton_weights = tw
        except Exception as e:  # noqa: BLE001
            _triton_error = f"{type(e).__name__}: {e}"
            log.debug("dllm_masks: Triton kernels not loaded (%s); CUDA tensors use the reference", _triton_error)
    return _triton


if torch.cuda.is_available():
    _load_triton()


def available_backends() -> dict:
    """Which implementations can serve, and why not where one cannot: ``{name: None | reason}``."""
    _load_triton()
    return {"ref": None, "cpp": None if _cpp is not None else (_cpp_error or "not built"),
            "triton": None if _triton is not None else (_triton_error or "not loaded")}


BACKENDS = ("ref", "cpp", "triton")


@functools.lru_cache(maxsize=None)
def _announce(served: str, device_type: str) -> None:
    """Log once per (backend, device type) which implementation serves."""
    log.debug("dllm_masks: priority_mask on %s served by %s", device_type, served)


def kernel_for(backend: Optional[str], device: torch.device, out: bool = False, *, weighted: bool = False):
    """The callable that serves the op for ``backend`` (None: the dispatcher, or
    ``DLLM_MASKS_BACKEND``) on ``device``; it takes :class:`OpArgs` positionally. With ``out``,
    the out-variant: the same, plus the buffers as keywords ``noisy, masked, labels,
    loss_weight, rates`` (see :data:`OUT_NAMES`); it writes them and returns None.

    ``weighted``: the call has float32 importance weights (docs/importance.md); on CUDA they are
    served by their own Triton kernel (or by the reference where Triton cannot load)."""
    if weighted:
        forced = backend if backend is not None else (os.environ.get("DLLM_MASKS_BACKEND") or None)
        if forced is None and device.type != "cpu" and _load_triton() is None:
            if not torch.compiler.is_compiling():
                _announce("ref (float32 priority)", device.type)
            return priority_mask_ref_out if out else priority_mask_ref
    if backend is None:
        backend = os.environ.get("DLLM_MASKS_BACKEND") or None
        name = "DLLM_MASKS_BACKEND"
    else:
        name = "backend"
    if backend is None:
        fn = torch.ops.dllm_masks.priority_mask.out if out else torch.ops.dllm_masks.priority_mask.default
        served = {"cpu": "cpp" if _cpp is not None else "ref",
                  "cuda": "triton" if _triton is not None else "ref"}.get(device.type, "ref")
    else:
        validation.check_choice(name, backend, BACKENDS)
        served = backend
        if backend == "ref":
            fn = priority_mask_ref_out if out else priority_mask_ref
        elif backend == "cpp":
            if device.type != "cpu":
                raise ValueError(f"{name}: 'cpp' serves CPU tensors only, input_ids is on {device}")
            if _cpp is None:
                raise RuntimeError(f"{name}: 'cpp' requested but the C++ extension is not available ({_cpp_error}); "
                                   "reinstall without DLLM_MASKS_SKIP_CPP=1")
            # the registered op, whose CPU kernel is the C++ one: traceable by Dynamo
            fn = torch.ops.dllm_masks.priority_mask.out if out else torch.ops.dllm_masks.priority_mask.default
        else:
            if _load_triton() is None:
                raise RuntimeError(f"{name}: 'triton' requested but the Triton kernels could not load ({_triton_error})")
            if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
                raise ValueError(f"{name}: 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before import")
            if weighted:
                fn = _triton_weights.priority_mask_weights_triton_out if out else _triton_weights.priority_mask_weights_triton
            else:
                fn = _triton.priority_mask_triton_out if out else _triton.priority_mask_triton
    if not torch.compiler.is_compiling():
        _announce(served, device.type)
    return fn


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
class MaskedBatch(NamedTuple):
    """Result of :func:`priority_mask`. V = 2 views with ``complementary=True``, else 1.

    Attributes
    ----------
    noisy_ids : torch.Tensor, input dtype, [V·T] (packed) or [V·B, L] (padded)
        ``mask_token_id`` where masked, the input id elsewhere. View 0 (σ) first, then view 1
        (the complement).
    labels : torch.Tensor, int64, same shape
        The input id where masked, -100 elsewhere (``ignore_index`` of cross-entropy).
    masked : torch.Tensor, bool, same shape
    loss_weight : torch.Tensor or None, float32, same shape
        ``"sigma"``: 1/σ in view 0 and 1/(1−σ) in view 1; ``"token"``: 1/q_i and 1/(1−q_i);
        0 where not masked. None when ``loss_weight=None``.
    cu_seqlens : torch.Tensor, int32, [V·B + 1]
        Offsets of the output sequences (packed: view 1's sequences follow view 0's).
    rates : torch.Tensor, float64, [S, 2]
        (q0, q1) per segment: the probability of masking a non-priority / priority token.
    sigma : torch.Tensor, float32, [S]
        σ per segment, after broadcasting.
    maskable : torch.Tensor or None, bool, same shape as ``noisy_ids``
        Tokens that could be masked in each view (the denominators of ``dm.diffusion_loss``'s
        ``"maskable"`` and ``"sequence"`` norms). ``dm.Masker`` fills it; :func:`priority_mask`
        leaves it None (``batch._replace(maskable=...)`` adds it).
    """

    noisy_ids: torch.Tensor
    labels: torch.Tensor
    masked: torch.Tensor
    loss_weight: Optional[torch.Tensor]
    cu_seqlens: torch.Tensor
    rates: torch.Tensor
    sigma: torch.Tensor
    maskable: Optional[torch.Tensor] = None


def num_segments(cu_seqlens, block_size: Optional[int] = None) -> int:
    """Number S of segments (units that own one σ) in a packed batch.

    Parameters
    ----------
    cu_seqlens : torch.Tensor (int32/int64, [B+1]) or sequence of ints
        Sequence offsets (flash-attn varlen convention).
    block_size : int or None
        None: one segment per sequence (S = B, empty sequences included). K ≥ 1: one segment per
        block of K positions, S = Σ_b ceil(len_b / K) (empty sequences have no blocks).

    Returns
    -------
    int (reads ``cu_seqlens`` on the host when ``block_size`` is given).
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        cu_seqlens = torch.as_tensor(list(cu_seqlens), dtype=torch.int64)
    validation.check_tensor("cu_seqlens", cu_seqlens, dtypes=validation.INT_DTYPES, ndim=1)
    if cu_seqlens.numel() < 1:
        raise ValueError("cu_seqlens: must have at least one element (B+1 offsets)")
    B = cu_seqlens.numel() - 1
    if block_size is None:
        return B
    K = min(validation.check_int("block_size", block_size, low=1), _MAX_BLOCK)
    lens = cu_seqlens[1:].to(torch.int64) - cu_seqlens[:-1].to(torch.int64)
    if bool((lens < 0).any()):
        b = int(torch.nonzero(lens < 0)[0])
        raise ValueError(f"cu_seqlens: must be non-decreasing, but cu_seqlens[{b + 1}] = {int(cu_seqlens[b + 1])} "
                         f"< cu_seqlens[{b}] = {int(cu_seqlens[b])}")
    return int(((lens - 1) // K + 1).sum())  # ceil(len / K), 0 for an empty sequence, without overflow


# A block at least as long as any sequence is one block per sequence: larger block sizes are this
# one (no sequence is longer than 2^31 - 1 tokens), so that they fit every kernel's integers.
_MAX_BLOCK = 2**31 - 1


_count_segments = num_segments  # for functions with a parameter of that name


def _as_i64(name: str, x) -> Union[int, torch.Tensor]:
    if type(x) is int and _I64_MIN <= x <= _I64_MAX:  # the common case, without the general checks
        return x
    if isinstance(x, torch.Tensor):
        validation.check_tensor(name, x, dtypes=validation.INT_DTYPES)
        if x.numel() != 1:
            raise ValueError(f"{name}: expected a single integer, got shape {tuple(x.shape)}")
        return x.reshape(()).to(torch.int64)
    x = validation.check_int(name, x, low=_I64_MIN, high=(1 << 64) - 1)  # an int64 or a uint64
    return (x + (1 << 63)) % (1 << 64) - (1 << 63)  # uint64 bits as an int64


def _flat(name: str, x, shape, device, dtypes, to: Optional[torch.dtype] = None) -> torch.Tensor:
    """``x`` checked (kind, dtype, device, shape) and flat, converted to ``to`` when given; no copy
    when it already is."""
    validation.check_tensor(name, x, dtypes=dtypes, device=device)
    if x.shape != shape:
        validation.check_shape(name, x, shape)
    x = x if x.dim() == 1 else x.reshape(-1)
    return x if to is None or x.dtype == to else x.to(to)


# dtypes and ranges the checks below compare against (built once, not per call)
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_CU_DTYPES = (torch.int32, torch.int64)
_MASKABLE_DTYPES = (torch.bool,) + validation.INT_DTYPES
_PRIORITY_DTYPES = (torch.bool, torch.float32) + validation.INT_DTYPES
_SIGMA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SAMPLINGS = ("bernoulli", "exact")
_LOSS_WEIGHTS = tuple(LOSS_WEIGHT_MODES)
_ID_RANGE = {d: (torch.iinfo(d).min, torch.iinfo(d).max) for d in validation.ID_DTYPES}
_RNG_PAIR = struct.Struct("=qq")


class OpArgs(NamedTuple):
    """The positional arguments of ``torch.ops.dllm_masks.priority_mask`` (in schema order), as
    :func:`normalize` makes them from the public call: flat tensors, int32 offsets, float32 σ,
    the (seed, seq_offset) pair as an int64 [2] tensor, and mode numbers."""

    input_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    sigma: torch.Tensor
    priority: Optional[torch.Tensor]
    maskable: Optional[torch.Tensor]
    prompt_lens: Optional[torch.Tensor]
    sample_ids: Optional[torch.Tensor]
    rng: torch.Tensor
    weight: float
    block_size: int
    num_segments: int
    exact: bool
    complementary: bool
    loss_weight_mode: int
    mask_token_id: int


class Normalized(NamedTuple):
    """A public call in the op's terms: ``args`` for the kernel, and the input's layout for
    :func:`wrap` (``padded``: a [B, L] input; ``length``: L padded, T packed)."""

    args: OpArgs
    padded: bool
    batch: int
    length: int


def _layout(input_ids: torch.Tensor, cu_seqlens):
    """(padded, B, L or T, int32 offsets) of the input."""
    dev = input_ids.device
    if input_ids.dim() == 2:
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens: must be None for a padded [B, L] input_ids (use maskable for padding)")
        B, L = input_ids.shape
        return True, B, L, torch.arange(B + 1, device=dev, dtype=torch.int32) * L
    T = input_ids.numel()
    if cu_seqlens is None:
        return False, 1, T, torch.tensor([0, T], device=dev, dtype=torch.int32)
    validation.check_tensor("cu_seqlens", cu_seqlens, dtypes=_CU_DTYPES, ndim=1, device=dev)
    n = cu_seqlens.numel()
    if n < 1:
        raise ValueError("cu_seqlens: must have at least one element (B+1 offsets)")
    if cu_seqlens.dtype == torch.int32:
        return False, n - 1, T, cu_seqlens
    if T >= 2**31:
        raise ValueError("input_ids: more than 2^31 - 1 tokens are not supported")
    return False, n - 1, T, cu_seqlens.to(torch.int32)


def _rng_pair(seed, seq_offset, dev) -> torch.Tensor:
    """int64 [2]: (seed, seq_offset) as uint64 bits, on the input's device."""
    seed_v, off_v = _as_i64("seed", seed), _as_i64("seq_offset", seq_offset)
    if not (isinstance(seed_v, torch.Tensor) or isinstance(off_v, torch.Tensor)):
        if dev.type == "cpu" and not torch.compiler.is_compiling():
            # the bytes of two int64s (a third of torch.tensor's cost); the tensor owns the buffer
            return torch.frombuffer(bytearray(_RNG_PAIR.pack(seed_v, off_v)), dtype=torch.int64)
        return torch.tensor([seed_v, off_v], dtype=torch.int64, device=dev)
    for name, x in (("seed", seed_v), ("seq_offset", off_v)):
        if isinstance(x, torch.Tensor) and x.device != dev:
            raise ValueError(f"{name}: is on {x.device} but input_ids is on {dev}; all tensors must share a device")
    return torch.stack([torch.as_tensor(seed_v, dtype=torch.int64, device=dev),
                        torch.as_tensor(off_v, dtype=torch.int64, device=dev)])


def _sigma_tensor(sigma, dev) -> torch.Tensor:
    """float32 [1] or [S] σ on the input's device (range checked here for a Python float)."""
    if isinstance(sigma, torch.Tensor):
        validation.check_tensor("sigma", sigma, dtypes=_SIGMA_DTYPES, ndim=(0, 1), device=dev)
        if sigma.requires_grad:
            sigma = sigma.detach()
        if sigma.dim() != 1:
            sigma = sigma.reshape(-1)
        return sigma if sigma.dtype == torch.float32 else sigma.to(torch.float32)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise TypeError(f"sigma: expected a float or a floating tensor, got {type(sigma).__name__}")
    if torch.compiler.is_compiling():  # possibly symbolic: not checked (see priority_mask)
        return torch.full((1,), sigma, dtype=torch.float32, device=dev)
    if math.isnan(sigma) or not 0.0 <= sigma <= 1.0:
        raise ValueError(f"sigma: must lie in [0, 1], got {sigma}")
    return torch.full((1,), float(sigma), dtype=torch.float32, device=dev)


def _segment_count(B: int, K: int, cu: torch.Tensor, sig: torch.Tensor, check: bool) -> int:
    """S: B per sequence; per block, σ's length when it has one value per segment (counted from
    the offsets only when ``check``), else counted from the offsets on the host."""
    if K == 0:
        return B
    if sig.numel() > 1 and not check:
        return sig.numel()
    if cu.device.type == "meta":
        raise ValueError("sigma: with block_size, a single σ needs the segment count, which cannot be read from "
                         "cu_seqlens on the meta device; give σ with one value per segment")
    return num_segments(cu, K)


def normalize(
    input_ids: torch.Tensor,
    sigma: Union[float, torch.Tensor],
    *,
    mask_token_id: int,
    cu_seqlens: Optional[torch.Tensor] = None,
    prompt_lens: Optional[torch.Tensor] = None,
    maskable: Optional[torch.Tensor] = None,
    priority: Optional[torch.Tensor] = None,
    weight: float = 1.0,
    sampling: str = "bernoulli",
    complementary: bool = False,
    block_size: Optional[int] = None,
    seed: Union[int, torch.Tensor] = 0,
    seq_offset: Union[int, torch.Tensor] = 0,
    sample_ids: Optional[torch.Tensor] = None,
    loss_weight: Optional[str] = None,
    validate: bool = True,
) -> Normalized:
    """Check the arguments of :func:`priority_mask` and put them in the op's terms.

    Takes the same keyword arguments as :func:`priority_mask` (less ``backend``); raises the same
    ``TypeError``/``ValueError`` naming the argument. Reads tensor data on the host only with
    ``validate=True`` (and for a single σ in per-block mode, to count segments).
    """
    validation.check_tensor("input_ids", input_ids, dtypes=validation.ID_DTYPES, ndim=(1, 2))
    dev = input_ids.device
    padded, B, L, cu = _layout(input_ids, cu_seqlens)
    T = input_ids.numel()
    tok_shape = (B, L) if padded else (T,)

    if maskable is not None and prompt_lens is not None:
        raise ValueError("maskable: give either maskable or prompt_lens, not both")
    if maskable is not None:
        maskable = _flat("maskable", maskable, tok_shape, dev, _MASKABLE_DTYPES, to=torch.bool)
    if priority is not None:
        priority = _flat("priority", priority, tok_shape, dev, _PRIORITY_DTYPES)
        if priority.dtype == torch.float32:  # importance weights (docs/importance.md)
            if validate:
                validation.check_weights_values(priority)
            if float(weight) != 1.0:
                raise ValueError(f"weight: must be 1 with float32 priority (the weights are its values), got {weight}")
        elif priority.dtype not in (torch.uint8, torch.bool):  # every kernel reads bool and uint8 bytes as != 0
            priority = priority != 0
    if prompt_lens is not None:
        prompt_lens = _flat("prompt_lens", prompt_lens, (B,), dev, validation.INT_DTYPES, to=torch.int64)
    if sample_ids is not None:
        sample_ids = _flat("sample_ids", sample_ids, (B,), dev, validation.INT_DTYPES, to=torch.int64)

    w = validation.check_weight(weight)
    validation.check_choice("sampling", sampling, _SAMPLINGS)
    validation.check_choice("loss_weight", loss_weight, _LOSS_WEIGHTS)
    complementary, validate = validation.check_bool("complementary", complementary), validation.check_bool("validate", validate)
    K = 0 if block_size is None else min(validation.check_int("block_size", block_size, low=1), _MAX_BLOCK)
    lo, hi = _ID_RANGE[input_ids.dtype]
    mask_token_id = validation.check_int("mask_token_id", mask_token_id, low=lo, high=hi)
    rng = _rng_pair(seed, seq_offset, dev)
    sig = _sigma_tensor(sigma, dev)

    readable = validation.host_readable(input_ids)
    if validate and readable and cu_seqlens is not None:
        validation.check_cu_seqlens(cu_seqlens, T)  # in its own dtype: int64 offsets before their cast
    S = _segment_count(B, K, cu, sig, validate and readable)
    if sig.numel() not in (1, S):
        raise ValueError(f"sigma: expected 1 or {S} values (one per segment), got {sig.numel()}")
    if validate and readable:
        validation.check_sigma_values(sig)
        if prompt_lens is not None:
            validation.check_prompt_lens(prompt_lens, cu)

    args = OpArgs(input_ids.reshape(-1) if padded else input_ids, cu, sig, priority, maskable, prompt_lens, sample_ids,
                  rng, w, K, S, sampling == "exact", complementary, LOSS_WEIGHT_MODES[loss_weight], mask_token_id)
    return Normalized(args, padded, B, L)


def wrap(outputs, call: Normalized) -> MaskedBatch:
    """Shape the op's flat outputs ``(noisy, masked, labels, loss_weight, rates)`` into a
    :class:`MaskedBatch` for the call's layout (view-major [V·B, L] rows, or [V·T] packed)."""
    noisy, masked, labels, lw, rates = outputs
    a = call.args
    lw = lw if a.loss_weight_mode != LOSS_WEIGHT_MODES[None] else None
    if call.padded:
        shape = (_views(call) * call.batch, call.length)
        noisy, masked, labels = noisy.reshape(shape), masked.reshape(shape), labels.reshape(shape)
        lw = lw.reshape(shape) if lw is not None else None
    return MaskedBatch(noisy, labels, masked, lw, _cu_out(call), rates, _sigma_out(a))


def _views(call: Normalized) -> int:
    return 2 if call.args.complementary else 1


def _cu_out(call: Normalized) -> torch.Tensor:
    """int32 [V·B + 1] offsets of the output sequences (view 1's follow view 0's)."""
    a = call.args
    if call.padded:
        return torch.arange(_views(call) * call.batch + 1, device=a.input_ids.device, dtype=torch.int32) * call.length
    cu = a.cu_seqlens
    if not a.complementary:
        return cu
    if cu.numel() <= _SMALL_BATCH and cu.device.type == "cpu" and not torch.compiler.is_compiling():
        # a few offsets: built on the host in a third of the three tensor ops' time
        c = cu.tolist()
        return torch.frombuffer(array.array("i", c + [x + call.length for x in c[1:]]), dtype=torch.int32)
    return torch.cat([cu, cu[1:] + call.length])


# Up to this many offsets, host-side work on a Python list beats launching tensor ops.
_SMALL_BATCH = 256


def _sigma_out(a: OpArgs) -> torch.Tensor:
    """σ per segment, float32 [S]: the call's own when it has one per segment, else broadcast."""
    return a.sigma if a.sigma.numel() == a.num_segments else a.sigma.expand(a.num_segments)


def _output_shapes(call: Normalized):
    """(shape of the per-token outputs, S) of a call: [V·B, L] padded or [V·T] packed."""
    nv = _views(call)
    shape = (nv * call.batch, call.length) if call.padded else (nv * call.length,)
    return shape, call.args.num_segments


def check_out(out, call: Normalized):
    """Check a :class:`MaskedBatch` given as ``out=`` against a call; return the five flat
    buffers of the out-variant ``(noisy, masked, labels, loss_weight, rates)``.

    Every per-token field must have the call's output shape and dtype (``noisy_ids``: the input's
    dtype, ``labels``: int64, ``masked``: bool, ``loss_weight``: float32, or None exactly when
    ``loss_weight=None``), ``rates`` float64 [S, 2]; all contiguous, on the input's device, and
    sharing no memory with each other or with the inputs. ``cu_seqlens`` and ``sigma`` of ``out``
    are not read or written. Raises TypeError / ValueError starting with ``out``.
    """
    if not isinstance(out, MaskedBatch):
        raise TypeError(f"out: expected a MaskedBatch (from priority_mask or empty_masked_batch), got {type(out).__name__}")
    a = call.args
    dev = a.input_ids.device
    shape, S = _output_shapes(call)
    has_lw = a.loss_weight_mode != LOSS_WEIGHT_MODES[None]
    if (out.loss_weight is not None) != has_lw:
        call_lw = next(k for k, v in LOSS_WEIGHT_MODES.items() if v == a.loss_weight_mode)
        want = f"a float32 tensor (loss_weight={call_lw!r})" if has_lw else "None (loss_weight=None)"
        raise ValueError(f"out: loss_weight: expected {want}, got {'None' if out.loss_weight is None else 'a tensor'}")
    bufs = (out.noisy_ids, out.masked, out.labels, out.loss_weight, out.rates) if has_lw else \
        (out.noisy_ids, out.masked, out.labels, out.rates)
    dtypes = (a.input_ids.dtype, torch.bool, torch.int64, torch.float32, torch.float64) if has_lw else \
        (a.input_ids.dtype, torch.bool, torch.int64, torch.float64)
    for x, dtype in zip(bufs, dtypes):
        want = (S, 2) if dtype is torch.float64 else shape  # rates, else a per-token output
        if not isinstance(x, torch.Tensor) or x.dtype != dtype or x.device != dev or x.shape != want \
                or not x.is_contiguous():
            _out_error(x, dtype, want, dev, has_lw, bufs)
    if not torch.compiler.is_compiling():
        _check_no_overlap(bufs, a, has_lw)
    flat = bufs if len(shape) == 1 else tuple(x if x.dtype is torch.float64 else x.reshape(-1) for x in bufs)
    if has_lw:
        return flat
    return flat[0], flat[1], flat[2], torch.empty(0, dtype=torch.float32, device=dev), flat[3]


def _out_names(has_lw: bool):
    return ("noisy_ids", "masked", "labels", "loss_weight", "rates") if has_lw else \
        ("noisy_ids", "masked", "labels", "rates")


def _out_error(x, dtype, shape, dev, has_lw, bufs):
    """Raise the error for the first check that buffer ``x`` of ``out`` fails."""
    name = next(n for n, y in zip(_out_names(has_lw), bufs) if y is x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"out: {name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype != dtype:
        raise TypeError(f"out: {name}: expected dtype {str(dtype).replace('torch.', '')}, "
                        f"got {str(x.dtype).replace('torch.', '')}")
    if x.device != dev:
        raise ValueError(f"out: {name}: is on {x.device} but input_ids is on {dev}")
    if x.shape != shape:
        raise ValueError(f"out: {name}: expected shape {tuple(shape)}, got {tuple(x.shape)}")
    raise ValueError(f"out: {name}: must be contiguous")


def _check_no_overlap(bufs, args: OpArgs, has_lw: bool):
    """ValueError if an output buffer shares memory with another or with an input (byte spans
    from the first element: the buffers are contiguous; an input's span covers its elements)."""
    spans = []  # (start, end, index): outputs 0.., then inputs as -1 - their OpArgs position
    for i, x in enumerate(bufs):
        if x.numel():
            lo = x.data_ptr()
            spans.append((lo, lo + x.nbytes, i))
    for i, x in enumerate(args):
        if isinstance(x, torch.Tensor) and x.numel():
            lo = x.data_ptr()
            spans.append((lo, lo + x.numel() * x.element_size(), -1 - i))
    spans.sort()
    # sweep by start: every span still open when another starts overlaps it
    open_ = []
    for lo, hi, i in spans:
        open_ = [o for o in open_ if o[1] > lo]
        for o in open_:
            if i >= 0 or o[2] >= 0:  # two inputs may share memory; an output may not
                _overlap_error(o[2], i, has_lw)
        open_.append((lo, hi, i))


def _overlap_error(i: int, j: int, has_lw: bool):
    """The overlap error between spans ``i`` and ``j`` of :func:`_check_no_overlap` (outputs by
    their index in ``bufs``, inputs as -1 - their OpArgs position), named as the call gave them."""
    names = _out_names(has_lw)
    o, other = (min(i, j), max(i, j)) if i >= 0 and j >= 0 else (max(i, j), min(i, j))
    what = f"out.{names[other]}" if other >= 0 else f"the input {OpArgs._fields[-1 - other]}"
    raise ValueError(f"out: {names[o]}: shares memory with {what}")


def output_layout(input_ids: torch.Tensor, *, cu_seqlens=None, block_size=None, complementary=False,
                  loss_weight=None, num_segments=None):
    """Checked shape-setting arguments of :func:`empty_masked_batch` → (per-token output shape,
    V, B, S)."""
    validation.check_tensor("input_ids", input_ids, dtypes=validation.ID_DTYPES, ndim=(1, 2))
    if not isinstance(complementary, bool):
        raise TypeError(f"complementary: expected a bool, got {type(complementary).__name__}")
    validation.check_choice("loss_weight", loss_weight, tuple(LOSS_WEIGHT_MODES))
    padded, B, L, cu = _layout(input_ids, cu_seqlens)
    K = None if block_size is None else validation.check_int("block_size", block_size, low=1)
    if num_segments is not None:
        S = validation.check_int("num_segments", num_segments, low=0)
    else:
        S = B if K is None else _count_segments(cu, K)
    nv = 2 if complementary else 1
    return ((nv * B, L) if padded else (nv * L,)), nv, B, S


def empty_masked_batch(
    input_ids: torch.Tensor,
    *,
    cu_seqlens: Optional[torch.Tensor] = None,
    block_size: Optional[int] = None,
    complementary: bool = False,
    loss_weight: Optional[str] = None,
    num_segments: Optional[int] = None,
) -> MaskedBatch:
    """Uninitialized output buffers for ``priority_mask(input_ids, ..., out=...)``.

    Takes the shape-setting arguments of :func:`priority_mask` (the same ``input_ids`` layout,
    ``cu_seqlens``, ``block_size``, ``complementary`` and ``loss_weight``); the buffers then fit
    every call with those shapes (any σ, seed, priority, prompts or weight).

    Parameters
    ----------
    input_ids : torch.Tensor, int32 or int64, [T] or [B, L]
        Only its shape, dtype and device are used.
    num_segments : int, optional
        S, to skip counting segments from ``cu_seqlens`` on the host (per-block mode).

    Returns
    -------
    MaskedBatch
        ``noisy_ids`` (input dtype), ``labels`` (int64), ``masked`` (bool) and ``loss_weight``
        (float32, or None) of shape [V·T] or [V·B, L]; ``rates`` float64 [S, 2];
        ``cu_seqlens`` int32 [V·B + 1] and ``sigma`` float32 [S] (never written by ``out=``: the
        result of a call carries the call's own).
    """
    shape, nv, B, S = output_layout(input_ids, cu_seqlens=cu_seqlens, block_size=block_size,
                                    complementary=complementary, loss_weight=loss_weight, num_segments=num_segments)
    dev = input_ids.device
    return MaskedBatch(
        noisy_ids=torch.empty(shape, dtype=input_ids.dtype, device=dev),
        labels=torch.empty(shape, dtype=torch.int64, device=dev),
        masked=torch.empty(shape, dtype=torch.bool, device=dev),
        loss_weight=None if loss_weight is None else torch.empty(shape, dtype=torch.float32, device=dev),
        cu_seqlens=torch.empty(nv * B + 1, dtype=torch.int32, device=dev),
        rates=torch.empty((S, 2), dtype=torch.float64, device=dev),
        sigma=torch.empty(S, dtype=torch.float32, device=dev),
    )


# Long only by its docstring (the public contract); the body is normalize -> kernel_for -> wrap.
def priority_mask(
    input_ids: torch.Tensor,
    sigma: Union[float, torch.Tensor],
    *,
    mask_token_id: int,
    cu_seqlens: Optional[torch.Tensor] = None,
    prompt_lens: Optional[torch.Tensor] = None,
    maskable: Optional[torch.Tensor] = None,
    priority: Optional[torch.Tensor] = None,
    weight: float = 1.0,
    sampling: str = "bernoulli",
    complementary: bool = False,
    block_size: Optional[int] = None,
    seed: Union[int, torch.Tensor] = 0,
    seq_offset: Union[int, torch.Tensor] = 0,
    sample_ids: Optional[torch.Tensor] = None,
    loss_weight: Optional[str] = None,
    out: Optional[MaskedBatch] = None,
    backend: Optional[str] = None,
    validate: bool = True,
) -> MaskedBatch:
    """Sample (complementary) priority masks for a batch of sequences.

    Each segment (a sequence, or a block of ``block_size`` positions) masks its maskable tokens
    so that its expected masking rate is σ, with priority tokens ``weight`` times as likely to be
    masked as the others (rates solved with clipping at 1, docs/design.md §3). Random numbers come from
    Philox4x32-10 keyed by ``seed`` and counted by sequence key and position (docs/design.md §4), so every
    backend returns bit-identical results.

    Parameters
    ----------
    input_ids : torch.Tensor, int32 or int64, [T] (packed) or [B, L] (padded)
        Token ids. A padded batch excludes its padding through ``maskable`` or ``prompt_lens``.
    sigma : float or torch.Tensor (floating, [1] or [S])
        Target masking rate per segment in [0, 1]; rounded to float32. A float or a 1-element
        tensor applies to every segment.
    mask_token_id : int
        Id written at masked positions; must fit the dtype of ``input_ids``.
    cu_seqlens : torch.Tensor, int32 (or int64), [B+1], optional
        Sequence offsets of a packed batch (``cu_seqlens[0] == 0``, non-decreasing, last == T);
        int64 offsets are checked (``validate=True``) before they are cast to int32.
        None with a 1-D input: one sequence. Must be None for a padded input.
    prompt_lens : torch.Tensor, integer, [B], optional
        Prompt tokens (the first ``prompt_lens[b]`` of sequence b) are never masked.
    maskable : torch.Tensor, bool, [T] or [B, L], optional
        Tokens that may be masked. Not together with ``prompt_lens``. Neither: all tokens.
    priority : torch.Tensor, bool or integer (nonzero = priority) or float32, [T] or [B, L], optional
        Information-dense tokens. None: no priority tokens (uniform masking). float32: importance
        weights w_i (finite, ≥ 0; ``weight`` stays 1): each segment masks token i with rate
        min(1, w_i·q0), q0 solved so the rates sum to σ·N (docs/importance.md).
    weight : float in [0, inf]
        w: priority tokens are w times as likely to be masked. 1 = uniform, inf = priority tokens
        first (hard), 0 = the others first (reverse hard).
    sampling : {"bernoulli", "exact"}
        Independent Bernoulli draws, or exactly round(σ·N) masked tokens per segment.
    complementary : bool
        Append the complementary view (maskable and not masked); outputs double in length.
    block_size : int, optional
        One σ per block of this many positions (block diffusion), aligned to each sequence's
        first token; a block longer than every sequence (any size up to any int) is one block per
        non-empty sequence. None: one σ per sequence.
    seed : int or int64 tensor
        Philox key (a uint64; an int in [-2^63, 2^64), negative ones taken mod 2^64). A tensor (e.g. on the GPU) keeps
        CUDA-graph replays drawing fresh numbers when updated in place.
    seq_offset : int or int64 tensor
        Sequence b is keyed ``seq_offset + b`` (e.g. ``step * B``); an int in [-2^63, 2^64). Ignored with ``sample_ids``.
    sample_ids : torch.Tensor, integer, [B], optional
        Per-sequence keys: masks then do not depend on packing or order.
    loss_weight : {None, "sigma", "token"}
        Per-token loss weights to return (see :class:`MaskedBatch`).
    out : MaskedBatch, optional
        Buffers to write instead of allocating: the result of an earlier call with the same
        shapes, or :func:`empty_masked_batch`. Its ``noisy_ids``, ``labels``, ``masked``,
        ``loss_weight`` and ``rates`` are written in place (bit-identical to a call without
        ``out``) and returned; see :func:`check_out` for what must match. Runs the out-variant
        ``dllm_masks::priority_mask.out`` (one op under ``torch.compile``).
    backend : {None, "ref", "cpp", "triton"}
        Force an implementation (default: the dispatcher, or ``DLLM_MASKS_BACKEND``).
    validate : bool
        Run the checks that read tensor data on the host (offsets, σ range, prompt lengths).
        ``False`` keeps the call free of host syncs (CUDA graphs, ``torch.compile``) provided
        ``seed`` and ``seq_offset`` are tensors on the device (Python ints are copied to the device
        on every call), ``cu_seqlens`` is given, and with ``block_size`` σ has one value per
        segment (a single σ needs the segment count, which is read from ``cu_seqlens``).

        Rule for tensors without host data: while ``torch.compile`` traces
        (``torch.compiler.is_compiling()``) and for tensors on the ``meta`` device, the checks that
        read tensor data (offsets, σ range, prompt lengths) are skipped, as with ``validate=False``,
        and so are the value checks of a float ``sigma`` or ``weight`` while tracing (they may be
        symbolic); kinds, dtypes, shapes, devices and integer arguments are still checked. Validate
        a batch eagerly once where its data is in doubt. On ``meta`` the outputs are the fake
        kernel's (shapes and dtypes); with ``block_size`` σ must then have one value per segment.

    Returns
    -------
    MaskedBatch
        Outputs of shape [V·T] (packed) or [V·B, L] (padded, view-major), V = 2 if complementary.

    Examples
    --------
    >>> ids = torch.arange(10, 30)
    >>> out = priority_mask(ids, 0.5, cu_seqlens=torch.tensor([0, 8, 20], dtype=torch.int32),
    ...                     prompt_lens=torch.tensor([2, 3]), mask_token_id=0, seed=1)
    >>> out.noisy_ids.shape, out.rates.shape
    (torch.Size([20]), torch.Size([2, 2]))
    """
    call = normalize(input_ids, sigma, mask_token_id=mask_token_id, cu_seqlens=cu_seqlens, prompt_lens=prompt_lens,
                     maskable=maskable, priority=priority, weight=weight, sampling=sampling,
                     complementary=complementary, block_size=block_size, seed=seed, seq_offset=seq_offset,
                     sample_ids=sample_ids, loss_weight=loss_weight, validate=validate)
    weighted = call.args.priority is not None and call.args.priority.is_floating_point()
    if out is None:
        return wrap(kernel_for(backend, input_ids.device, weighted=weighted)(*call.args), call)
    bufs = check_out(out, call)
    kernel_for(backend, input_ids.device, out=True, weighted=weighted)(*call.args, **dict(zip(OUT_NAMES, bufs)))
    a = call.args
    return MaskedBatch(out.noisy_ids, out.labels, out.masked, out.loss_weight, _cu_out(call), out.rates,
                       _sigma_out(a))
