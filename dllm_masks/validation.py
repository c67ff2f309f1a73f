"""Argument checks for the public ops (docs/design.md §9).

Each check raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong value or shape)
with the argument's name first. The checks that read tensor data on the host (monotone
``cu_seqlens``, σ range, prompt lengths) run only with ``validate=True``.
"""
from __future__ import annotations

import math
import numbers
import sys
from typing import Optional

import torch

ID_DTYPES = (torch.int32, torch.int64)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_tensor(name: str, x, *, dtypes=None, ndim=None, device=None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if dtypes is not None and x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype {allowed}, got {str(x.dtype).replace('torch.', '')}")
    if ndim is not None and x.dim() not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(x.shape)}")
    if device is not None and x.device != device:
        raise ValueError(f"{name}: is on {x.device} but input_ids is on {device}; all tensors must share a device")
    return x


def check_shape(name: str, x: torch.Tensor, shape) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(x.shape)}")


def check_int(name: str, x, *, low: Optional[int] = None, high: Optional[int] = None) -> int:
    if type(x) is not int and (isinstance(x, bool) or not isinstance(x, numbers.Integral)):
        raise TypeError(f"{name}: expected an int, got {type(x).__name__}")
    x = int(x)
    if low is not None and x < low:
        raise ValueError(f"{name}: must be >= {low}, got {x}")
    if high is not None and x > high:
        raise ValueError(f"{name}: must be <= {high}, got {x}")
    return x


def check_bool(name: str, x) -> bool:
    """A ``bool`` or a NumPy bool, as a ``bool``."""
    if isinstance(x, bool):
        return x
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.bool_):
        return bool(x)
    raise TypeError(f"{name}: expected a bool, got {type(x).__name__}")


def host_readable(x: torch.Tensor) -> bool:
    """Whether checks may read ``x``'s data on the host: not on the meta device (no data), and not
    while ``torch.compile`` traces (a read would break the graph)."""
    return x.device.type != "meta" and not torch.compiler.is_compiling()


def check_weight(weight) -> float:
    """``weight`` as a float in [0, inf]. While ``torch.compile`` traces, a Python float may be
    symbolic: its value is then not checked (see :func:`dllm_masks.ops.priority_mask`)."""
    if type(weight) is float and 0.0 <= weight:  # the common case (NaN fails the comparison)
        return weight
    if torch.compiler.is_compiling() and not isinstance(weight, torch.Tensor):
        return weight
    if isinstance(weight, torch.Tensor):
        if weight.numel() != 1:
            raise ValueError(f"weight: expected a scalar, got shape {tuple(weight.shape)}")
        weight = weight.item()
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise TypeError(f"weight: expected a float in [0, inf], got {type(weight).__name__}")
    w = float(weight)
    if math.isnan(w) or w < 0:
        raise ValueError(f"weight: must be in [0, inf], got {w}")
    return w


def check_choice(name: str, x, choices) -> None:
    if x not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {x!r}")


def check_cu_seqlens(cu: torch.Tensor, T: int) -> None:
    """Host-side checks of a packed batch's offsets (reads the tensor)."""
    if cu.numel() < 1:
        raise ValueError("cu_seqlens: must have at least one element (B+1 offsets)")
    c = cu.detach().to("cpu", torch.int64)
    if int(c[0]) != 0:
        raise ValueError(f"cu_seqlens: must start at 0, got {int(c[0])}")
    if c.numel() > 1 and bool((c[1:] < c[:-1]).any()):
        b = int(torch.nonzero(c[1:] < c[:-1])[0])
        raise ValueError(f"cu_seqlens: must be non-decreasing, but cu_seqlens[{b + 1}] = {int(c[b + 1])} < cu_seqlens[{b}] = {int(c[b])}")
    if int(c[-1]) != T:
        raise ValueError(f"cu_seqlens: must end at T = input_ids.numel() = {T}, got {int(c[-1])}")


def check_sigma_values(sigma: torch.Tensor) -> None:
    s = sigma.detach().to("cpu", torch.float32)
    if bool(torch.isnan(s).any()):
        raise ValueError("sigma: contains NaN")
    if s.numel() and (bool((s < 0).any()) or bool((s > 1).any())):
        raise ValueError(f"sigma: must lie in [0, 1], got values in [{float(s.min())}, {float(s.max())}]")


def check_weights_values(priority: torch.Tensor) -> None:
    """float32 importance weights: finite and >= 0 (reads the tensor)."""
    if not bool((torch.isfinite(priority) & (priority >= 0)).all()):
        raise ValueError("priority: float weights must be finite and >= 0")


def check_prompt_lens(prompt_lens: torch.Tensor, cu: torch.Tensor) -> None:
    p = prompt_lens.detach().to("cpu", torch.int64)
    c = cu.detach().to("cpu", torch.int64)
    lens = c[1:] - c[:-1]
    if bool((p < 0).any()):
        b = int(torch.nonzero(p < 0)[0])
        raise ValueError(f"prompt_lens: must be >= 0, got prompt_lens[{b}] = {int(p[b])}")
    if bool((p > lens).any()):
        b = int(torch.nonzero(p > lens)[0])
        raise ValueError(f"prompt_lens: prompt_lens[{b}] = {int(p[b])} is longer than sequence {b} ({int(lens[b])} tokens)")
