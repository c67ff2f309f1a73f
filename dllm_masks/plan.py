"""``dm.MaskPlan``: a ``priority_mask`` call prepared once and run many times on fixed buffers.

:func:`~dllm_masks.priority_mask` checks and converts every argument on every call: tens of
microseconds of Python whatever the batch size, which is as long as the kernel takes on about
10K tokens (docs/performance.md). A loop that keeps its batch in the same buffers (static input
buffers refilled each step, as for CUDA graphs, or a fixed-shape benchmark) can pay that once:

>>> plan = dm.MaskPlan(ids_buf, sigma_buf, cu_seqlens=cu_buf, priority=prio_buf, weight=2.0,
...                    complementary=True, mask_token_id=MASK)
>>> for step in range(steps):
...     ids_buf.copy_(next_ids); sigma_buf.copy_(next_sigma); prio_buf.copy_(next_prio)
...     batch = plan.run(seed=0, seq_offset=step * B)       # writes plan.out, returns it

What a plan fixes, and what a run reads:

* **Fixed at the plan:** every argument's kind, dtype, shape and device, the Python values
  (``weight``, ``sampling``, ``block_size``, ``complementary``, ``loss_weight``,
  ``mask_token_id``, a float ``sigma``), and the *layout*: the contents of ``cu_seqlens`` (the
  sequences, and with them the segment count and the output offsets). Changing ``cu_seqlens``
  in place after the plan is refused by the next run (its version counter moved).
* **Read at each run:** the current contents of ``input_ids``, a tensor ``sigma``,
  ``priority``, ``maskable``, ``prompt_lens`` and ``sample_ids``, and the ``seed`` /
  ``seq_offset`` of the run (or of the plan, when the run gives none).
* A run returns the same :class:`~dllm_masks.MaskedBatch` object every time, whose buffers the
  next run overwrites (copy what must outlive the step). One run at a time: a plan is not
  meant to be shared between threads.

Every argument is used as given, never copied: a plan refuses an argument that
:func:`~dllm_masks.priority_mask` would convert (int64 ``cu_seqlens``, a float64 ``sigma``,
int32 ``prompt_lens``, integer ``priority``, a non-contiguous padded input …), since refilling
the given tensor would then not reach the kernel. Results are bit-identical to
``priority_mask`` with the same arguments (``tests/test_plan.py``).

Checks of values (monotone offsets, σ in [0, 1], prompt lengths within their sequences) run at
each run with ``validate=True`` (the default) where the kernel does not make them itself; the
C++ kernel checks them inside every call whatever ``validate`` says, and never reads or writes
out of bounds.
"""
from __future__ import annotations

import inspect
from typing import Optional, Union

import torch

from . import ops, validation
from .ops import (_RNG_PAIR, OUT_NAMES, MaskedBatch, _as_i64, _cu_out, _rng_pair, _sigma_out, check_out,
                  empty_masked_batch, kernel_for, normalize)

__all__ = ["MaskPlan"]

# arguments a plan must pass to the op as the caller's own tensors (OpArgs fields of the same names)
_SHARED = ("input_ids", "cu_seqlens", "sigma", "priority", "maskable", "prompt_lens", "sample_ids")
_KEYWORDS = frozenset(p.name for p in inspect.signature(normalize).parameters.values()
                      if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "validate")


class MaskPlan:
    """A checked ``priority_mask`` call on fixed buffers; :meth:`run` masks their current contents.

    Parameters
    ----------
    input_ids, sigma, **kwargs
        As :func:`dllm_masks.priority_mask` (every keyword but ``backend``/``out``/``validate``
        means the same), with the tensors used as given (see the module docstring for what
        must not need converting): ``input_ids`` int32/int64 [T] or a contiguous [B, L];
        ``cu_seqlens`` int32 [B+1]; ``sigma`` float32 [1] or [S] (or a float, fixed);
        ``priority`` bool, uint8 or float32; ``maskable`` bool; ``prompt_lens`` and
        ``sample_ids`` int64 [B]; ``seed`` and ``seq_offset`` ints (the defaults of :meth:`run`)
        or int64 tensors (read at each run, e.g. for CUDA-graph replays).
    out : MaskedBatch, optional
        Buffers to write (checked as ``priority_mask(..., out=)`` checks them); default: new ones
        from :func:`dllm_masks.empty_masked_batch`.
    backend : {None, "ref", "cpp", "triton"}
        As :func:`dllm_masks.priority_mask`.
    validate : bool
        Check values on the host at the plan and at each run (see the module docstring).

    Attributes
    ----------
    out : MaskedBatch
        What every :meth:`run` writes and returns.
    """

    def __init__(self, input_ids: torch.Tensor, sigma: Union[float, torch.Tensor], *, out: Optional[MaskedBatch] = None,
                 backend: Optional[str] = None, validate: bool = True, **kwargs):
        unknown = sorted(set(kwargs) - _KEYWORDS)
        if unknown:
            raise TypeError(f"{unknown[0]}: not an argument of MaskPlan (it takes priority_mask's: "
                            f"{', '.join(sorted(_KEYWORDS))}, out, backend, validate)")
        if "mask_token_id" not in kwargs:
            raise TypeError("mask_token_id: required (the id written at masked positions)")
        call = normalize(input_ids, sigma, validate=validate, **kwargs)
        a = call.args
        given = dict(kwargs, input_ids=input_ids, sigma=sigma)
        for name in _SHARED:
            arg, user = getattr(a, name), given.get(name)
            if isinstance(user, torch.Tensor) and user.numel() and arg.data_ptr() != user.data_ptr():
                raise ValueError(f"{name}: a MaskPlan runs on the given tensor, but this one would be converted "
                                 f"(dtype {str(user.dtype).replace('torch.', '')}, shape {tuple(user.shape)}; "
                                 "see dllm_masks.plan for the dtypes it takes)")
        if out is None:
            out = empty_masked_batch(input_ids, cu_seqlens=kwargs.get("cu_seqlens"), block_size=kwargs.get("block_size"),
                                     complementary=a.complementary, loss_weight=kwargs.get("loss_weight"),
                                     num_segments=a.num_segments)
        bufs = check_out(out, call)
        weighted = a.priority is not None and a.priority.is_floating_point()
        self._fn = kernel_for(backend, input_ids.device, out=True, weighted=weighted)
        # the C++ kernel checks values inside every call; the others need the host checks
        self._served_by_cpp = (input_ids.device.type == "cpu" and ops._cpp is not None
                               and self._fn is torch.ops.dllm_masks.priority_mask.out)
        self._bufs = dict(zip(OUT_NAMES, bufs))
        self._validate = validation.check_bool("validate", validate)
        self._cu = kwargs.get("cu_seqlens")
        self._cu_version = self._cu._version if self._cu is not None else None
        # the (seed, seq_offset) pair: the caller's tensors, read at each run, or else an owned
        # buffer refilled in place on the CPU
        self._rng_tensors = any(isinstance(kwargs.get(k), torch.Tensor) for k in ("seed", "seq_offset"))
        self._rng_bytes = None
        if a.rng.device.type == "cpu" and not self._rng_tensors:
            self._rng_bytes = bytearray(_RNG_PAIR.pack(*a.rng.tolist()))
            a = a._replace(rng=torch.frombuffer(self._rng_bytes, dtype=torch.int64))
        self._default_rng = (kwargs.get("seed", 0), kwargs.get("seq_offset", 0))
        self._rng_moved = False  # a run set another seed or offset than the plan's
        self._args = a  # the op's arguments (OpArgs), rng included
        self.out = MaskedBatch(out.noisy_ids, out.labels, out.masked, out.loss_weight, _cu_out(call), out.rates,
                               _sigma_out(a))

    def run(self, seed: Optional[Union[int, torch.Tensor]] = None,
            seq_offset: Optional[Union[int, torch.Tensor]] = None) -> MaskedBatch:
        """Mask the buffers' current contents into :attr:`out` and return it.

        Parameters
        ----------
        seed, seq_offset : int, optional
            This run's Philox key and sequence offset (as :func:`dllm_masks.priority_mask`);
            None: the plan's. A plan made with tensor ``seed``/``seq_offset`` reads them at each
            run and takes none here (update the tensors in place instead).
        """
        if self._cu is not None and self._cu._version != self._cu_version:
            raise ValueError("cu_seqlens: changed in place since the plan was made; a plan fixes the batch's "
                             "layout, make a new MaskPlan for the new one")
        if seed is not None or seq_offset is not None or self._rng_moved:
            self._set_rng(self._default_rng[0] if seed is None else seed,
                          self._default_rng[1] if seq_offset is None else seq_offset)
            self._rng_moved = seed is not None or seq_offset is not None
        if self._rng_tensors:  # the caller's seed / offset tensors, as they are now
            self._args = self._args._replace(rng=_rng_pair(*self._default_rng, self._args.rng.device))
        if self._validate and not self._served_by_cpp:
            self._check_values()
        self._fn(*self._args, **self._bufs)
        return self.out

    __call__ = run

    def _set_rng(self, seed, seq_offset) -> None:
        if self._rng_tensors:
            raise ValueError("seed: this plan reads its seed and seq_offset from the tensors it was given; "
                             "update them in place instead of passing values to run()")
        s, o = _as_i64("seed", seed), _as_i64("seq_offset", seq_offset)
        if isinstance(s, torch.Tensor) or isinstance(o, torch.Tensor):
            raise TypeError("seed: run() takes ints; give tensors to the plan instead")
        if self._rng_bytes is not None:
            _RNG_PAIR.pack_into(self._rng_bytes, 0, s, o)
        else:
            self._args.rng.copy_(torch.tensor([s, o], dtype=torch.int64))

    def _check_values(self) -> None:
        a = self._args
        if not validation.host_readable(a.input_ids):
            return
        if self._cu is not None:
            validation.check_cu_seqlens(self._cu, a.input_ids.numel())
        validation.check_sigma_values(a.sigma)
        if a.priority is not None and a.priority.dtype == torch.float32:
            validation.check_weights_values(a.priority)
        if a.prompt_lens is not None:
            validation.check_prompt_lens(a.prompt_lens, a.cu_seqlens)
