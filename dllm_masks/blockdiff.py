"""Block-diffusion attention masks (BD3-LM / dFactory layout).

A block-diffusion training input holds, for every packed document, one or more *noisy* copies
x_t (the views of :func:`dllm_masks.priority_mask`: the σ view and, with ``complementary=True``,
its complement) followed by the *clean* sequence x_0. Every copy carries the same positions
(for RoPE). With block b(i) = position // block_size, query i may attend key j only inside the
same document, and then

============  ============  ==========================================
query i       key j         rule
============  ============  ==========================================
x_t           x_t           same noisy copy and b(i) == b(j)
x_t           x_0           b(i) >  b(j)   (clean earlier blocks)
x_0           x_0           b(i) >= b(j)   (block-causal clean stream)
x_0           x_t           never
============  ============  ==========================================

Because the clean stream never attends a noisy token, its hidden states do not depend on the
noise, so several noisy views of a document can share one clean copy exactly: the packed input is
``[view 0 (T) | view 1 (T) | ... | clean (T)]``, which is ``cat(out.noisy_ids, input_ids)`` for the
output ``out`` of ``priority_mask(input_ids, ..., complementary=True)``.

The rule is carried by per-token descriptors (:class:`BlockDiffLayout`), so that the same code
serves training batches (:func:`training_layout`), decoding (:func:`decode_layout`), the dense
SDPA mask (:func:`dense_mask`), a FlexAttention ``BlockMask`` (:func:`flex_block_mask`), a
per-document gathered SDPA (mode ``"sdpa_docs"``) and a per-block one (mode ``"sdpa_blocks"``, the
CPU default) in :class:`BlockDiffAttention`.

Why ``"sdpa_blocks"`` is exact and cheap: under the rule, the queries of block b of one copy
(a noisy view, or the clean sequence) of a document attend exactly the keys of the clean blocks
0..b-1 of that document plus the keys of block b of the same copy. So every (document, copy,
block) is one small dense attention of K queries over (b + 1)·K keys, and all of them with the same
b batch into one SDPA call: about (V+1)·L²/2 scores per document of length L, against
((V+1)·L)² for dense per-document attention (6× fewer for V = 2), with no mask at all when
lengths are multiples of the block size.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import validation

__all__ = [
    "BlockDiffLayout",
    "training_layout",
    "decode_layout",
    "allowed",
    "dense_mask",
    "flex_available",
    "flex_block_mask",
    "BlockDiffAttention",
    "ATTENTION_MODES",
    "attention_mask_4d",
    "position_ids_4d",
    "block_mask_4d",
]

log = logging.getLogger("dllm_masks")

ATTENTION_MODES = ("auto", "sdpa", "sdpa_docs", "sdpa_blocks", "flex")


@dataclass
class BlockDiffLayout:
    """Per-token descriptors of a block-diffusion input of N tokens.

    Attributes
    ----------
    doc : torch.Tensor, int64, [N]
        Packed document of each token; tokens of different documents never attend each other.
    copy : torch.Tensor, int64, [N]
        Noisy copy (view) of an x_t token, ≥ 0; -1 for a clean (x_0) token. Two x_t tokens attend
        each other only within the same copy of the same document.
    position : torch.Tensor, int64, [N]
        Position inside the document (the same for every copy); RoPE reads it.
    block_size : int
        Positions per block; block b(i) = position // block_size.
    """

    doc: torch.Tensor
    copy: torch.Tensor
    position: torch.Tensor
    block_size: int

    def __post_init__(self):
        self.block_size = validation.check_int("block_size", self.block_size, low=1)
        for name in ("doc", "copy", "position"):
            validation.check_tensor(name, getattr(self, name), dtypes=(torch.int64,), ndim=1)
        n = self.doc.numel()
        if self.copy.numel() != n or self.position.numel() != n:
            raise ValueError(f"copy/position: expected {n} entries like doc, got "
                             f"{self.copy.numel()} and {self.position.numel()}")

    @property
    def n(self) -> int:
        """N, the number of tokens."""
        return self.doc.numel()

    @property
    def block(self) -> torch.Tensor:
        """int64 [N]: block index of each token."""
        return self.position // self.block_size

    @property
    def noisy(self) -> torch.Tensor:
        """bool [N]: True on x_t tokens."""
        return self.copy >= 0

    def to(self, device) -> "BlockDiffLayout":
        return BlockDiffLayout(self.doc.to(device), self.copy.to(device), self.position.to(device), self.block_size)


def training_layout(cu_seqlens: torch.Tensor, block_size: int, *, views: int = 1) -> BlockDiffLayout:
    """Layout of a packed training batch: ``views`` noisy copies of all T tokens, then the clean copy.

    Parameters
    ----------
    cu_seqlens : torch.Tensor, int32 or int64, [B+1]
        Offsets of the B packed documents of the clean batch (T = ``cu_seqlens[-1]`` tokens).
    block_size : int
        Positions per block (32 in the paper).
    views : int
        Noisy copies: 1, or 2 with ``complementary=True`` (the op's output is view-major).

    Returns
    -------
    BlockDiffLayout of N = (views + 1)·T tokens ordered ``[view 0 | ... | view V-1 | clean]``.
    """
    validation.check_tensor("cu_seqlens", cu_seqlens, dtypes=validation.INT_DTYPES, ndim=1)
    views = validation.check_int("views", views, low=1)
    block_size = validation.check_int("block_size", block_size, low=1)
    validation.check_cu_seqlens(cu_seqlens.to(torch.int64), int(cu_seqlens[-1]) if cu_seqlens.numel() else 0)
    cu = cu_seqlens.to(torch.int64)
    dev = cu.device
    lens = cu[1:] - cu[:-1]
    B, T = lens.numel(), int(cu[-1])
    doc = torch.repeat_interleave(torch.arange(B, device=dev), lens)
    pos = torch.arange(T, device=dev) - cu[:-1][doc]
    copies = [torch.full((T,), v, dtype=torch.int64, device=dev) for v in range(views)]
    copies.append(torch.full((T,), -1, dtype=torch.int64, device=dev))
    return BlockDiffLayout(doc.repeat(views + 1), torch.cat(copies), pos.repeat(views + 1), block_size)


def decode_layout(prefix_lens: Sequence[int], block_ends: Sequence[int], block_size: int,
                  device=None) -> BlockDiffLayout:
    """Layout for decoding one block per document: the noisy current blocks, then the clean prefixes.

    Document d has a clean prefix of positions ``[0, prefix_lens[d])`` (prompt and finished
    blocks) and a noisy current block of positions ``[prefix_lens[d], block_ends[d])``. Training
    and decoding see the same rule, so a noisy block attends the clean earlier blocks and itself.
    A prefix that ends inside a block (a prompt not a multiple of ``block_size``) is fine: the
    prompt tail is then part of the noisy block, as in training where prompt tokens are never
    masked.

    Parameters
    ----------
    prefix_lens, block_ends : sequence of int, length D
        ``0 <= prefix_lens[d] <= block_ends[d]``.
    block_size : int
    device : torch.device, optional

    Returns
    -------
    BlockDiffLayout ordered ``[noisy block of doc 0 | ... | doc D-1 | clean prefix of doc 0 | ...]``.
    """
    if len(prefix_lens) != len(block_ends):
        raise ValueError(f"block_ends: expected {len(prefix_lens)} entries like prefix_lens, got {len(block_ends)}")
    doc, copy, pos = [], [], []
    for d, (p, e) in enumerate(zip(prefix_lens, block_ends)):
        p, e = validation.check_int("prefix_lens", p, low=0), validation.check_int("block_ends", e, low=0)
        if e < p:
            raise ValueError(f"block_ends: block_ends[{d}]={e} is before prefix_lens[{d}]={p}")
        doc.append(torch.full((e - p,), d, dtype=torch.int64))
        copy.append(torch.zeros(e - p, dtype=torch.int64))
        pos.append(torch.arange(p, e, dtype=torch.int64))
    for d, p in enumerate(prefix_lens):
        doc.append(torch.full((p,), d, dtype=torch.int64))
        copy.append(torch.full((p,), -1, dtype=torch.int64))
        pos.append(torch.arange(p, dtype=torch.int64))
    cat = (lambda xs: torch.cat(xs).to(device)) if doc else (lambda xs: torch.zeros(0, dtype=torch.int64, device=device))
    return BlockDiffLayout(cat(doc), cat(copy), cat(pos), block_size)


def allowed(doc_q, copy_q, blk_q, doc_k, copy_k, blk_k):
    """The attention rule on broadcastable descriptor tensors (also a FlexAttention ``mask_mod`` body).

    Returns a bool tensor: True where the query may attend the key.
    """
    qn, kn = copy_q >= 0, copy_k >= 0
    noisy_noisy = qn & kn & (copy_q == copy_k) & (blk_q == blk_k)
    noisy_clean = qn & ~kn & (blk_q > blk_k)
    clean_clean = ~qn & ~kn & (blk_q >= blk_k)
    return (doc_q == doc_k) & (noisy_noisy | noisy_clean | clean_clean)


def dense_mask(layout: BlockDiffLayout) -> torch.Tensor:
    """bool [N, N]: entry (i, j) is True where query i may attend key j (SDPA's ``attn_mask``)."""
    d, c, b = layout.doc, layout.copy, layout.block
    return allowed(d[:, None], c[:, None], b[:, None], d[None, :], c[None, :], b[None, :])


_flex = None
_flex_error: Optional[str] = None


def flex_available() -> bool:
    """True where ``torch.nn.attention.flex_attention`` imports (torch ≥ 2.5)."""
    global _flex, _flex_error
    if _flex is None and _flex_error is None:
        try:
            from torch.nn.attention import flex_attention as fa

            _flex = fa
        except Exception as e:  # noqa: BLE001 - an older torch: SDPA serves
            _flex_error = f"{type(e).__name__}: {e}"
            log.debug("dllm_masks: FlexAttention unavailable (%s); block diffusion uses SDPA", _flex_error)
    return _flex is not None


def flex_block_mask(layout: BlockDiffLayout, *, BLOCK_SIZE: int = 128):
    """A FlexAttention ``BlockMask`` of the rule, over one batch and head of N queries and keys.

    Parameters
    ----------
    layout : BlockDiffLayout
    BLOCK_SIZE : int
        FlexAttention's tile size (its sparsity granularity), not the diffusion block size.

    Returns
    -------
    torch.nn.attention.flex_attention.BlockMask

    Raises
    ------
    RuntimeError
        When FlexAttention is not available in this torch (use :func:`dense_mask`).
    """
    if not flex_available():
        raise RuntimeError(f"flex_block_mask: FlexAttention is not available ({_flex_error}); use dense_mask")
    d, c, b = layout.doc, layout.copy, layout.block

    def mask_mod(batch, head, q_idx, kv_idx):
        return allowed(d[q_idx], c[q_idx], b[q_idx], d[kv_idx], c[kv_idx], b[kv_idx])

    n = layout.n
    return _flex.create_block_mask(mask_mod, 1, 1, n, n, device=layout.doc.device, BLOCK_SIZE=BLOCK_SIZE)


# ---------------------------------------------------------------------------------------------
# Padded rows [view 0 | ... | view V-1 | x_0] (HF models: a [B, 1, N, N] mask and position ids)
# ---------------------------------------------------------------------------------------------
def _row_descriptors(seq_len: int, block_size: int, views: int, device):
    """(copy, position) int64 [(V+1)·L] of one padded row ``[view 0 | … | view V−1 | x_0]``."""
    pos = torch.arange(seq_len, device=device, dtype=torch.int64)
    copy = torch.cat([torch.full((seq_len,), v, dtype=torch.int64, device=device) for v in range(views)]
                     + [torch.full((seq_len,), -1, dtype=torch.int64, device=device)])
    return copy, pos.repeat(views + 1)


def _check_rows(batch_size, seq_len, block_size, views, key_padding_mask):
    B = validation.check_int("batch_size", batch_size, low=0)
    L = validation.check_int("seq_len", seq_len, low=0)
    K = validation.check_int("block_size", block_size, low=1)
    nv = validation.check_int("views", views, low=1)
    if key_padding_mask is not None:
        validation.check_tensor("key_padding_mask", key_padding_mask, dtypes=(torch.bool,) + validation.INT_DTYPES, ndim=2)
        validation.check_shape("key_padding_mask", key_padding_mask, (B, L))
    return B, L, K, nv


def attention_mask_4d(batch_size: int, seq_len: int, block_size: int, *, views: int = 1,
                      key_padding_mask: Optional[torch.Tensor] = None, dtype: torch.dtype = torch.bool,
                      device=None) -> torch.Tensor:
    """The block-diffusion attention mask of padded rows ``[view 0 | … | view V−1 | x_0]``.

    Row b of the model input is ``cat(noisy view 0 of sequence b, …, view V−1, clean sequence b)``,
    N = (V+1)·L tokens (for a padded :class:`~dllm_masks.MaskedBatch` ``out`` of V views:
    ``torch.cat([out.noisy_ids.view(V, B, L).transpose(0, 1).reshape(B, V * L), input_ids], 1)``).
    The rule is the module's (:func:`allowed`) with one document per row.

    Parameters
    ----------
    batch_size, seq_len : int
        B and L of the clean batch.
    block_size : int
        Block-diffusion block size K.
    views : int
        V noisy views per row (2 with ``complementary=True``).
    key_padding_mask : torch.Tensor, bool/int, [B, L], optional
        1 on real tokens, 0 on padding (HF ``attention_mask``); padding keys are never attended, in
        any copy. A padding query attends itself only (so that no softmax row is empty).
    dtype : torch.dtype
        ``torch.bool`` (True = attend; SDPA's convention) or a floating dtype for an additive
        mask (0 = attend, −inf = not), e.g. the model's dtype for eager attention.
    device : torch.device, optional
        Default: the device of ``key_padding_mask``, else CPU.

    Returns
    -------
    torch.Tensor, ``dtype``, [B, 1, N, N].
    """
    B, L, K, nv = _check_rows(batch_size, seq_len, block_size, views, key_padding_mask)
    if not isinstance(dtype, torch.dtype) or not (dtype == torch.bool or dtype.is_floating_point):
        raise TypeError(f"dtype: expected torch.bool or a floating dtype, got {dtype}")
    dev = device if device is not None else (key_padding_mask.device if key_padding_mask is not None else None)
    copy, pos = _row_descriptors(L, K, nv, dev)
    blk = pos // K
    zero = torch.zeros_like(copy)
    base = allowed(zero[:, None], copy[:, None], blk[:, None], zero[None, :], copy[None, :], blk[None, :])
    mask = base[None].expand(B, -1, -1)
    if key_padding_mask is not None:
        real = (key_padding_mask.to(dev) != 0).repeat(1, nv + 1)  # [B, N]
        eye = torch.eye(base.shape[0], dtype=torch.bool, device=dev)
        mask = (mask & real[:, None, :] & real[:, :, None]) | (eye[None] & ~real[:, :, None])
    mask = mask[:, None]
    if dtype == torch.bool:
        return mask.contiguous()
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill_(~mask, float("-inf"))


def position_ids_4d(batch_size: int, seq_len: int, *, views: int = 1, device=None) -> torch.Tensor:
    """Position ids of the rows of :func:`attention_mask_4d`: every copy repeats 0..L−1
    (right padding), int64 [B, (V+1)·L]."""
    B = validation.check_int("batch_size", batch_size, low=0)
    L = validation.check_int("seq_len", seq_len, low=0)
    nv = validation.check_int("views", views, low=1)
    return torch.arange(L, device=device, dtype=torch.int64).repeat(nv + 1)[None].expand(B, -1).contiguous()


def block_mask_4d(batch_size: int, seq_len: int, block_size: int, *, views: int = 1,
                  key_padding_mask: Optional[torch.Tensor] = None, device=None, BLOCK_SIZE: int = 128):
    """A FlexAttention ``BlockMask`` of the same rows and rule as :func:`attention_mask_4d`
    (B batches, one head broadcast, N = (V+1)·L queries and keys).

    Raises
    ------
    RuntimeError
        When FlexAttention is not available in this torch (use :func:`attention_mask_4d`).
    """
    if not flex_available():
        raise RuntimeError(f"block_mask_4d: FlexAttention is not available ({_flex_error}); use attention_mask_4d")
    B, L, K, nv = _check_rows(batch_size, seq_len, block_size, views, key_padding_mask)
    dev = device if device is not None else (key_padding_mask.device if key_padding_mask is not None else "cpu")
    copy, pos = _row_descriptors(L, K, nv, dev)
    blk = pos // K
    if key_padding_mask is not None:
        real = (key_padding_mask.to(dev) != 0).repeat(1, nv + 1)
    else:
        real = torch.ones(B, copy.numel(), dtype=torch.bool, device=dev)

    def mask_mod(b, h, q_idx, kv_idx):
        rule = allowed(0, copy[q_idx], blk[q_idx], 0, copy[kv_idx], blk[kv_idx]) & real[b, kv_idx] & real[b, q_idx]
        return rule | ((q_idx == kv_idx) & ~real[b, q_idx])

    n = copy.numel()
    return _flex.create_block_mask(mask_mod, B, None, n, n, device=dev, BLOCK_SIZE=BLOCK_SIZE)


_compiled_flex = None
FLEX_COMPILE = True  # False: eager flex_attention (materializes the scores; tests on a CPU)


def _flex_attention(q, k, v, block_mask):
    global _compiled_flex
    if not FLEX_COMPILE:
        return _flex.flex_attention(q, k, v, block_mask=block_mask)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(_flex.flex_attention, dynamic=True)
    return _compiled_flex(q, k, v, block_mask=block_mask)


class BlockDiffAttention:
    """Attention over a block-diffusion layout, prepared once per batch and reused by every layer.

    Modes
    -----
    ``"sdpa"``
        One dense [N, N] boolean mask and ``F.scaled_dot_product_attention``; any device.
    ``"sdpa_docs"``
        Tokens gathered per document into a padded [D, M] batch with a [D, 1, M, M] mask: only
        the diagonal document blocks of the packed score matrix are computed.
    ``"sdpa_blocks"``
        One SDPA call per block index b over every (document, copy) that has a block b: K
        queries against the clean blocks before b and the copy's own block b (see the module
        docstring). The fewest scores of the SDPA modes; the CPU default.
    ``"flex"``
        ``flex_attention`` compiled with ``torch.compile`` and a sparse ``BlockMask``; needs a CUDA
        device for training (on CPU, torch has no FlexAttention backward).
    ``"auto"``
        ``"flex"`` on CUDA where FlexAttention imports, else ``"sdpa_blocks"``.

    Parameters
    ----------
    layout : BlockDiffLayout
    mode : str
        One of :data:`ATTENTION_MODES`.
    """

    def __init__(self, layout: BlockDiffLayout, mode: str = "auto"):
        validation.check_choice("attention", mode, ATTENTION_MODES)
        dev = layout.doc.device
        if mode == "auto":
            mode = "flex" if dev.type == "cuda" and flex_available() else "sdpa_blocks"
        if mode == "flex" and not flex_available():
            raise ValueError(f"attention: 'flex' requested but FlexAttention is unavailable ({_flex_error})")
        self.layout, self.mode = layout, mode
        self.position = layout.position
        if mode == "sdpa":
            self.mask = dense_mask(layout)[None, None]
        elif mode == "flex":
            self.block_mask = flex_block_mask(layout)
        elif mode == "sdpa_blocks":
            self._prepare_blocks()
        else:
            self._prepare_docs()

    def _prepare_blocks(self):
        lay = self.layout
        n, K, dev = lay.n, lay.block_size, lay.doc.device
        self.plans = []
        if n == 0:
            return
        # Dense ids: document d, copy c (clean = 0, noisy copies 1..), block b, slot s = position % K.
        _, d = torch.unique(lay.doc, return_inverse=True)
        copies, c = torch.unique(lay.copy, return_inverse=True)
        if int(copies[0]) != -1:  # no clean token at all: index 0 stays empty
            c = c + 1
        C = int(c.max()) + 1
        b, slot = lay.block, lay.position % K
        D, NB = int(d.max()) + 1, int(b.max()) + 1
        table = torch.full((D, C, NB, K), n, dtype=torch.int64, device=dev)  # n: an empty slot
        flat = ((d * C + c) * NB + b) * K + slot
        if torch.unique(flat).numel() != n:
            raise ValueError("layout: two tokens share (document, copy, position); sdpa_blocks needs them distinct")
        table.view(-1)[flat] = torch.arange(n, device=dev)
        present = (table < n).any(-1)  # [D, C, NB]: does this copy have tokens in this block
        dst = []
        for blk in range(NB):
            rows = torch.nonzero(present[:, :, blk])  # [R, 2]: (document, copy)
            if rows.numel() == 0:
                continue
            q_idx = table[rows[:, 0], rows[:, 1], blk]  # [R, K]
            prefix = table[rows[:, 0], 0, :blk].reshape(len(rows), blk * K)  # the clean blocks < blk
            k_idx = torch.cat([prefix, q_idx], dim=1)  # [R, (blk + 1) K]
            valid = k_idx < n
            mask = None if bool(valid.all()) else valid[:, None, None, :]
            q_ok = (q_idx < n).reshape(-1)
            self.plans.append((q_idx, k_idx, mask, None if bool(q_ok.all()) else q_ok))
            dst.append(q_idx.reshape(-1)[q_ok])
        self.dst = torch.cat(dst)  # every token exactly once

    def _prepare_docs(self):
        lay = self.layout
        n = lay.n
        dev = lay.doc.device
        if n == 0:
            self.index = torch.zeros(0, 0, dtype=torch.int64, device=dev)
            self.mask = torch.zeros(0, 1, 0, 0, dtype=torch.bool, device=dev)
            self.valid = torch.zeros(0, 0, dtype=torch.bool, device=dev)
            return
        # Group tokens by document, keeping their order inside a document.
        order = torch.sort(lay.doc, stable=True).indices
        docs, counts = torch.unique_consecutive(lay.doc[order], return_counts=True)
        D, M = docs.numel(), int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(n, device=dev) - torch.repeat_interleave(starts, counts)
        row = torch.repeat_interleave(torch.arange(D, device=dev), counts)
        index = torch.full((D, M), n, dtype=torch.int64, device=dev)  # n: a padding slot
        index[row, slot] = order
        valid = index < n
        pad = lambda t, fill: torch.cat([t, t.new_full((1,), fill)])[index]  # noqa: E731
        d, c, b = pad(lay.doc, -1), pad(lay.copy, -1), pad(lay.block, 0)
        m = allowed(d[:, :, None], c[:, :, None], b[:, :, None], d[:, None, :], c[:, None, :], b[:, None, :])
        m = m & valid[:, None, :]
        # A padding query attends to its row's first key so that softmax has no empty row.
        m[:, :, 0] |= ~valid
        self.index, self.valid, self.mask = index, valid, m[:, None]
        self.rows, self.slots = row, slot
        self.order = order

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attend.

        Parameters
        ----------
        q, k, v : torch.Tensor, floating, [N, H, Dh]
            Queries, keys and values of the N layout tokens (RoPE already applied).

        Returns
        -------
        torch.Tensor, [N, H, Dh], the dtype of ``q``.
        """
        if self.mode == "sdpa_blocks":
            n, H, Dh = q.shape
            if n == 0:
                return q.clone()
            pad = q.new_zeros(1, H, Dh)
            qp, kp, vp = torch.cat([q, pad]), torch.cat([k, pad]), torch.cat([v, pad])
            outs = []
            for q_idx, k_idx, mask, q_ok in self.plans:
                o = F.scaled_dot_product_attention(qp[q_idx].transpose(1, 2), kp[k_idx].transpose(1, 2),
                                                   vp[k_idx].transpose(1, 2), attn_mask=mask)
                o = o.transpose(1, 2).reshape(-1, H, Dh)
                outs.append(o if q_ok is None else o[q_ok])
            return q.new_empty(n, H, Dh).index_copy(0, self.dst, torch.cat(outs))
        if self.mode == "sdpa_docs":
            n, H, Dh = q.shape
            if n == 0:
                return q.clone()
            zero = q.new_zeros(1, H, Dh)
            g = lambda t: torch.cat([t, zero])[self.index].transpose(1, 2)  # [D, H, M, Dh]  # noqa: E731
            o = F.scaled_dot_product_attention(g(q), g(k), g(v), attn_mask=self.mask)
            o = o.transpose(1, 2)  # [D, M, H, Dh]
            out = q.new_empty(n, H, Dh)
            out[self.order] = o[self.rows, self.slots]
            return out
        qh, kh, vh = (t.transpose(0, 1)[None] for t in (q, k, v))  # [1, H, N, Dh]
        if self.mode == "sdpa":
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=self.mask)
        else:
            o = _flex_attention(qh, kh, vh, self.block_mask)
        return o[0].transpose(0, 1)
