"""Models for block-diffusion SFT: a small LLaDA-style bidirectional transformer (RoPE, RMSNorm,
SwiGLU) and an adapter for Hugging Face models that accept a 4-D attention mask.

Both take a packed token stream in the layout of :mod:`dllm_masks.blockdiff` and return logits
only at the positions asked for (the masked tokens of the noisy views), so the LM head costs
nothing on the clean half.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import validation
from ..blockdiff import ATTENTION_MODES, BlockDiffAttention, dense_mask

__all__ = ["ModelConfig", "DiffusionLM", "HFDiffusionLM", "build_model", "forward_block"]


@dataclass
class ModelConfig:
    """Sizes of the model.

    Attributes
    ----------
    kind : {"tiny", "hf"}
        The built-in transformer, or a Hugging Face model built from ``hf_config`` (no hub).
    vocab_size : int
        0: taken from the tokenizer.
    d_model, n_layers, n_heads : int
    d_ff : int
        SwiGLU hidden size; 0: 8/3 · d_model rounded up to a multiple of 32 (LLaMA's rule).
    max_position : int
        Longest document (RoPE table).
    rope_theta, norm_eps, init_std : float
    tie_embeddings : bool
    attention : str
        One of ``"auto"``, ``"sdpa"``, ``"sdpa_docs"``, ``"flex"`` (see :class:`BlockDiffAttention`).
    hf_config : dict
        For ``kind="hf"``: keyword arguments of ``transformers.AutoConfig.for_model`` (with
        ``model_type``); ``vocab_size`` is filled in from the tokenizer when absent.
        ``attn_implementation`` (default ``"sdpa"``; ``"eager"`` also takes 4-D masks).
    hf_pretrained : str
        For ``kind="hf"``: a local folder with a pretrained model (``from_pretrained`` with
        ``local_files_only=True``; nothing is downloaded). Empty: random weights from ``hf_config``.
    hf_trust_remote_code : bool
        Allow the folder's own modelling code (LLaDA 2.0 ships its own).
    """

    kind: str = "tiny"
    vocab_size: int = 0
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 0
    max_position: int = 4096
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    tie_embeddings: bool = False
    attention: str = "auto"
    hf_config: dict = field(default_factory=dict)
    hf_pretrained: str = ""
    hf_trust_remote_code: bool = False

    def __post_init__(self):
        validation.check_choice("model.kind", self.kind, ("tiny", "hf"))
        validation.check_int("model.vocab_size", self.vocab_size, low=0)
        for name in ("d_model", "n_layers", "n_heads", "max_position"):
            validation.check_int(f"model.{name}", getattr(self, name), low=1)
        validation.check_int("model.d_ff", self.d_ff, low=0)
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"model.n_heads: d_model={self.d_model} must split into {self.n_heads} heads of even size")
        validation.check_choice("model.attention", self.attention, ATTENTION_MODES)
        if not isinstance(self.hf_config, dict):
            raise TypeError(f"model.hf_config: expected a dict, got {type(self.hf_config).__name__}")
        if not isinstance(self.hf_pretrained, str):
            raise TypeError(f"model.hf_pretrained: expected a path string, got {type(self.hf_pretrained).__name__}")
        if self.kind == "hf" and not self.hf_pretrained and "model_type" not in self.hf_config:
            raise ValueError("model.hf_config: needs a 'model_type' (e.g. 'llama') for kind='hf' "
                             "without hf_pretrained")

    @property
    def ffn_size(self) -> int:
        return self.d_ff or 32 * math.ceil(8 * self.d_model / 3 / 32)

    def to_dict(self) -> dict:
        return asdict(self)


def _rope_tables(max_position: int, head_dim: int, theta: float):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.arange(max_position, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().to(torch.float32), ang.sin().to(torch.float32)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate halves (GPT-NeoX / LLaMA-HF convention). x: [N, H, Dh]; cos, sin: [N, Dh/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


class _Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, f = cfg.d_model, cfg.ffn_size
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.attn_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.mlp_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.gate_up = nn.Linear(d, 2 * f, bias=False)
        self.down = nn.Linear(f, d, bias=False)

    def forward(self, x, cos, sin, attn):
        """x [N, d]; ``attn(q, k, v)`` on [N, H, Dh] (a :class:`BlockDiffAttention` or a closure)."""
        N = x.shape[0]
        q, k, v = self.qkv(self.attn_norm(x)).view(N, 3, self.n_heads, self.head_dim).unbind(1)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        x = x + self.o(attn(q, k, v).reshape(N, -1))
        g, u = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class DiffusionLM(nn.Module):
    """A small LLaDA-style bidirectional transformer; attention is restricted only by the layout.

    Parameters
    ----------
    cfg : ModelConfig
        With ``vocab_size`` > 0.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("model.vocab_size: must be set (>= 1) before building the model")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = _rope_tables(cfg.max_position, cfg.d_model // cfg.n_heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # residual projections scaled down with depth (GPT-2)
                s = std / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("o.weight", "down.weight")) else std
                nn.init.normal_(p, 0.0, s)

    def forward(self, input_ids: torch.Tensor, attn: BlockDiffAttention,
                output_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits of the tokens at ``output_index``.

        Parameters
        ----------
        input_ids : torch.Tensor, int64, [N]
            Tokens in the order of ``attn.layout``.
        attn : BlockDiffAttention
            Prepared for this batch's layout (positions come from it).
        output_index : torch.Tensor, int64, [M], optional
            Token indices whose logits to return (default: all N).

        Returns
        -------
        torch.Tensor, float32, [M, vocab_size]
        """
        pos = attn.position
        if pos.numel() and int(pos.max()) >= self.cfg.max_position:
            raise ValueError(f"input_ids: position {int(pos.max())} exceeds model.max_position = {self.cfg.max_position}")
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        x = self.embed(input_ids)
        for blk in self.blocks:
            x = blk(x, cos, sin, attn)
        if output_index is not None:
            x = x[output_index]
        return self.lm_head(self.norm(x)).float()


class HFDiffusionLM(nn.Module):
    """Adapter: a Hugging Face model that accepts a 4-D attention mask, driven by a block-diffusion layout.

    The layout becomes an additive [1, 1, N, N] mask (0 where allowed, the dtype's minimum
    elsewhere) and ``position_ids`` [1, N]; the model's own causal mask is bypassed, as
    transformers does for any 4-D mask. ``transformers`` is an optional import.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A ``*ForCausalLM`` (or any model with ``.model`` returning hidden states and ``.lm_head``),
        or a bare model whose output has ``logits``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "HFDiffusionLM":
        """Build from ``cfg.hf_pretrained`` (a local folder) or ``cfg.hf_config`` (random weights)."""
        try:
            from transformers import AutoConfig, AutoModelForCausalLM
        except ImportError:
            raise ValueError("model.kind: 'hf' needs the optional package transformers") from None
        kw = dict(cfg.hf_config)
        impl = kw.pop("attn_implementation", "sdpa")  # eager and sdpa take 4-D masks; flash-attn does not
        if cfg.hf_pretrained:
            import os

            if not os.path.isdir(cfg.hf_pretrained):
                raise ValueError(f"model.hf_pretrained: {cfg.hf_pretrained!r} is not a local folder "
                                 "(no hub downloads at run time)")
            return cls(AutoModelForCausalLM.from_pretrained(
                cfg.hf_pretrained, local_files_only=True, trust_remote_code=cfg.hf_trust_remote_code,
                attn_implementation=impl, **kw))
        kw.setdefault("vocab_size", cfg.vocab_size)
        model_type = kw.pop("model_type")
        hf_cfg = AutoConfig.for_model(model_type, **kw)
        return cls(AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=impl,
                                                    trust_remote_code=cfg.hf_trust_remote_code))

    def forward(self, input_ids, attn: BlockDiffAttention, output_index=None):
        """Same contract as :meth:`DiffusionLM.forward`."""
        dtype = next(self.model.parameters()).dtype
        allowed = dense_mask(attn.layout)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        kw = dict(input_ids=input_ids[None], attention_mask=mask[None, None], position_ids=attn.position[None])
        body = getattr(self.model, "model", None)
        head = getattr(self.model, "lm_head", None)
        if body is not None and head is not None:
            h = body(**kw, use_cache=False).last_hidden_state[0]
            if output_index is not None:
                h = h[output_index]
            return head(h).float()
        logits = self.model(**kw, use_cache=False).logits[0]
        return (logits if output_index is None else logits[output_index]).float()


def _cached_attention(R: int, Kb: int, valid: torch.Tensor, past, store: list):
    """Attention of a block's queries over cached clean keys plus the block's own keys (decoding)."""
    def attend(q, k, v):
        H, Dh = q.shape[1:]
        q, k, v = (t.reshape(R, Kb, H, Dh) for t in (q, k, v))
        store.append((k, v))
        mask = valid
        if past is not None:
            pk, pv, pm = past
            k, v, mask = torch.cat([pk, k], 1), torch.cat([pv, v], 1), torch.cat([pm, valid], 1)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask[:, None, None, :])
        return o.transpose(1, 2).reshape(R * Kb, H, Dh)
    return attend


def forward_block(model: "DiffusionLM", ids: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, cache=None,
                  output_index: Optional[torch.Tensor] = None):
    """One block per row against a key/value cache of the clean blocks before it (decoding).

    Under the block-diffusion rule a block's queries (noisy or clean) attend exactly the clean
    blocks before it and their own block, and the clean blocks never attend anything later, so
    their keys and values can be computed once and cached.

    Parameters
    ----------
    model : DiffusionLM
    ids, pos : torch.Tensor, int64, [R, Kb]
        Tokens and positions of one block per row (padding anywhere, marked in ``valid``).
    valid : torch.Tensor, bool, [R, Kb]
    cache : list of (k, v, mask) per layer, optional
        Keys and values [R, P, H, Dh] of each row's clean prefix, with a bool key mask [R, P].
    output_index : torch.Tensor, int64, [M], optional
        Flat indices into [R·Kb] whose logits to return (default: none).

    Returns
    -------
    (logits float32 [M, vocab] or None, list per layer of (k, v) of the block, each [R, Kb, H, Dh])
    """
    R, Kb = ids.shape
    p = pos.reshape(-1)
    cos, sin = model.rope_cos[p], model.rope_sin[p]
    x = model.embed(ids.reshape(-1))
    new = []
    for li, blk in enumerate(model.blocks):
        x = blk(x, cos, sin, _cached_attention(R, Kb, valid, None if cache is None else cache[li], new))
    logits = None if output_index is None else model.lm_head(model.norm(x[output_index])).float()
    return logits, new


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model a config describes (``vocab_size`` must be filled in)."""
    if cfg.kind == "hf":
        return HFDiffusionLM.from_config(cfg)
    return DiffusionLM(cfg)
