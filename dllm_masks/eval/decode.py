"""Block-by-block diffusion decoding (LLaDA / BD3-LM semi-autoregressive sampling).

Each document's answer is generated one block of ``block_size`` positions at a time, blocks
aligned to the document's first token as in training. A block starts fully masked (the prompt
tail that falls into it stays as is); in each of ``steps_per_block`` steps the model predicts
every masked position of the block, attending the clean earlier blocks and the block itself
(the layout of :func:`dllm_masks.blockdiff.decode_layout`), and the most confident predictions
are unmasked (LLaDA's *low-confidence remasking*), so that the block is clean after the last
step. Earlier blocks are never changed. Several prompts decode together in one packed batch.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .. import validation
from ..blockdiff import BlockDiffAttention, decode_layout

__all__ = ["transfer_schedule", "generate", "answer_ids"]


def transfer_schedule(num_masked: int, steps: int) -> List[int]:
    """Tokens to unmask at each step: ``num_masked`` spread evenly, the remainder first (LLaDA)."""
    base, extra = divmod(num_masked, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def _pick(logits: torch.Tensor, mask_id: int, temperature: float, generator) -> tuple:
    """Predicted tokens and their confidences (the model's probability of each) for masked positions."""
    logits = logits.float()
    logits[:, mask_id] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).to(logits.device)
        pred = (logits.double() / temperature - torch.log(-torch.log(u.clamp_min(1e-20)))).argmax(-1)
    else:
        pred = logits.argmax(-1)
    return pred, probs.gather(1, pred[:, None]).squeeze(1)


def _unmask(conf, owner, k_per_owner):
    """Indices (into conf) of the ``k_per_owner[j]`` most confident positions of each owner j."""
    chosen = []
    for j, k in enumerate(k_per_owner):
        sel = torch.nonzero(owner == j).squeeze(1)
        k = min(k, sel.numel())
        if k:
            chosen.append(sel[torch.topk(conf[sel], k).indices])
    return torch.cat(chosen) if chosen else owner.new_zeros(0)


@torch.no_grad()
def generate(model, prompts: Sequence[Sequence[int]], *, mask_id: int, eos_id: int, block_size: int = 32,
             gen_length: int = 128, steps_per_block: int = 32, temperature: float = 0.0,
             attention: str = "auto", stop_at_eos: bool = True, generator: Optional[torch.Generator] = None,
             device=None, cache: bool = True, progress: bool = False) -> List[torch.Tensor]:
    """Generate ``gen_length`` tokens after each prompt.

    Parameters
    ----------
    model : nn.Module
        Called as ``model(input_ids [N], BlockDiffAttention, output_index [M]) -> logits [M, V]``.
    prompts : sequence of sequences of int
        Prompt token ids (D prompts; lengths may differ).
    mask_id, eos_id : int
    block_size : int
        As in training (32 in the paper).
    gen_length : int
        Positions to generate after each prompt.
    steps_per_block : int
        Denoising steps T per block; each unmasks about ``block_size / T`` tokens.
    temperature : float
        0: greedy argmax; > 0: Gumbel-max sampling at this temperature (confidence is still the
        model's probability of the chosen token).
    attention : str
        Attention mode of the uncached path (see :class:`BlockDiffAttention`).
    stop_at_eos : bool
        Once a finished block holds ``<eos>`` after the prompt, fill the rest with ``<eos>``
        without running the model (training padded answers with ``<eos>`` the same way).
    generator : torch.Generator, optional
        For ``temperature > 0``.
    device : torch.device, optional
        Default: the model's.
    cache : bool
        Cache the keys and values of finished clean blocks (models with ``forward_block``, i.e.
        :class:`~dllm_masks.train.model.DiffusionLM`); each step then runs only the current
        block. False, or another model: recompute the clean prefix at every step. Both give the
        same tokens up to floating-point rounding.
    progress : bool

    Returns
    -------
    list of torch.Tensor, int64, [len(prompt) + gen_length] each, on the CPU: the prompt
    unchanged, then the generated tokens; no ``mask_id`` remains.
    """
    K = validation.check_int("block_size", block_size, low=1)
    G = validation.check_int("gen_length", gen_length, low=0)
    T = validation.check_int("steps_per_block", steps_per_block, low=1)
    if temperature < 0:
        raise ValueError(f"temperature: must be >= 0, got {temperature}")
    if device is None:
        device = next(model.parameters()).device
    seqs, plen = [], []
    for i, p in enumerate(prompts):
        p = torch.as_tensor(list(p), dtype=torch.int64)
        if bool((p == mask_id).any()):
            raise ValueError(f"prompts: prompt {i} contains the mask id {mask_id}")
        seqs.append(torch.cat([p, torch.full((G,), mask_id, dtype=torch.int64)]))
        plen.append(p.numel())
    st = _State(seqs, plen, K, G)
    cached = cache and hasattr(model, "blocks") and hasattr(model, "rope_cos")
    was_training = model.training
    model.eval()
    bar = tqdm(total=st.rounds() * T, desc="decode", disable=not progress, leave=False)
    try:
        run = _rounds_cached if cached else _rounds_full
        run(model, st, mask_id, eos_id, T, temperature, attention, stop_at_eos, generator, device, bar)
    finally:
        bar.close()
        model.train(was_training)
    return st.seqs


class _State:
    """Sequences being decoded and the current block of each."""

    def __init__(self, seqs, plen, K, G):
        self.seqs, self.plen, self.K = seqs, plen, K
        self.total = [s.numel() for s in seqs]
        self.block = [p // K for p in plen]
        self.done = [G == 0 for _ in seqs]

    def rounds(self) -> int:
        return max([-(-t // self.K) - b for t, b in zip(self.total, self.block)], default=0)

    def active(self):
        act = [d for d in range(len(self.seqs)) if not self.done[d]]
        return act, [self.block[d] * self.K for d in act], [min(self.total[d], (self.block[d] + 1) * self.K)
                                                            for d in act]

    def finish_round(self, active, ends, eos_id, stop_at_eos):
        for d, e in zip(active, ends):
            self.block[d] += 1
            if e >= self.total[d]:
                self.done[d] = True
            elif stop_at_eos and bool((self.seqs[d][self.plen[d]:e] == eos_id).any()):
                self.seqs[d][e:] = eos_id
                self.done[d] = True


def _rounds_full(model, st, mask_id, eos_id, T, temperature, attention, stop_at_eos, generator, device, bar):
    K = st.K
    while not all(st.done):
        active, starts, ends = st.active()
        sched = {d: transfer_schedule(int((st.seqs[d][s:e] == mask_id).sum()), T)
                 for d, s, e in zip(active, starts, ends)}
        for step in range(T):
            bar.update(1)
            todo = [i for i, d in enumerate(active) if sched[d][step] > 0]
            if not todo:
                continue
            docs = [active[i] for i in todo]
            s_, e_ = [starts[i] for i in todo], [ends[i] for i in todo]
            lay = decode_layout(s_, e_, K, device=device)
            noisy = [st.seqs[d][s:e] for d, s, e in zip(docs, s_, e_)]
            clean = [st.seqs[d][:s] for d, s in zip(docs, s_)]
            ids = torch.cat(noisy + clean).to(device)
            n_noisy = sum(x.numel() for x in noisy)
            out_idx = torch.nonzero(ids[:n_noisy] == mask_id).squeeze(1)
            pred, conf = _pick(model(ids, BlockDiffAttention(lay, attention), out_idx), mask_id, temperature, generator)
            lens = torch.tensor([x.numel() for x in noisy], device=device)
            owner = torch.repeat_interleave(torch.arange(len(docs), device=device), lens)[out_idx]
            offset = (torch.cumsum(lens, 0) - lens)[owner]
            top = _unmask(conf, owner, [sched[d][step] for d in docs])
            for j, d in enumerate(docs):
                mine = top[owner[top] == j]
                st.seqs[d][(out_idx[mine] - offset[mine]).cpu() + s_[j]] = pred[mine].cpu()
        st.finish_round(active, ends, eos_id, stop_at_eos)


def _stack_cache(store, rows, n_layers, device):
    """Pad the cached clean prefixes of ``rows`` into per-layer (k, v, mask) of [R, P, H, Dh]."""
    lens = [sum(k.shape[0] for k, _ in store[d][0]) for d in rows]
    P = max(lens)
    if P == 0:
        return None
    out = []
    for li in range(n_layers):
        ks, vs = [], []
        for d in rows:
            chunks = store[d][li]
            ks.append(torch.cat([k for k, _ in chunks]) if chunks else None)
            vs.append(torch.cat([v for _, v in chunks]) if chunks else None)
        ref = next(k for k in ks if k is not None)
        pad = lambda t, n: ref.new_zeros((P, *ref.shape[1:])) if t is None else (  # noqa: E731
            t if n == P else torch.cat([t, ref.new_zeros((P - n, *ref.shape[1:]))]))
        out.append((torch.stack([pad(k, n) for k, n in zip(ks, lens)]), torch.stack([pad(v, n) for v, n in zip(vs, lens)]),
                    torch.arange(P, device=device)[None, :] < torch.tensor(lens, device=device)[:, None]))
    return out


def _rounds_cached(model, st, mask_id, eos_id, T, temperature, attention, stop_at_eos, generator, device, bar):
    from ..train.model import forward_block

    K, L = st.K, len(model.blocks)
    store = [[[] for _ in range(L)] for _ in st.seqs]  # per document, per layer: (k, v) chunks
    maxpos = model.rope_cos.shape[0] - 1

    def run_block(rows, starts, ends, out_mask=None):
        ids = torch.full((len(rows), K), mask_id, dtype=torch.int64)
        valid = torch.zeros(len(rows), K, dtype=torch.bool)
        for r, (d, s, e) in enumerate(zip(rows, starts, ends)):
            ids[r, :e - s] = st.seqs[d][s:e]
            valid[r, :e - s] = True
        pos = (torch.tensor(starts)[:, None] + torch.arange(K)[None, :]).clamp(max=maxpos)
        return ids.to(device), pos.to(device), valid.to(device)

    def remember(rows, new, valid):
        for r, d in enumerate(rows):
            n = int(valid[r].sum())
            for li, (k, v) in enumerate(new):
                store[d][li].append((k[r, :n], v[r, :n]))

    # the prompt's whole blocks: clean prefix, block by block (every row has the same prefix length)
    for j in range(max(st.block, default=0)):
        rows = [d for d in range(len(st.seqs)) if j < st.block[d]]
        ids, pos, valid = run_block(rows, [j * K] * len(rows), [(j + 1) * K] * len(rows))
        _, new = forward_block(model, ids, pos, valid, _stack_cache(store, rows, L, device))
        remember(rows, new, valid)
    while not all(st.done):
        active, starts, ends = st.active()
        past = _stack_cache(store, active, L, device)
        ids, pos, valid = run_block(active, starts, ends)
        sched = [transfer_schedule(int((ids[r] == mask_id).sum()), T) for r in range(len(active))]
        for step in range(T):
            bar.update(1)
            need = [sc[step] for sc in sched]
            if not any(need):
                continue
            flat = ids.reshape(-1)
            out_idx = torch.nonzero((flat == mask_id) & valid.reshape(-1)).squeeze(1)
            logits, _ = forward_block(model, ids, pos, valid, past, out_idx)
            pred, conf = _pick(logits, mask_id, temperature, generator)
            top = _unmask(conf, out_idx // K, need)
            flat[out_idx[top]] = pred[top]
        for r, (d, s, e) in enumerate(zip(active, starts, ends)):
            st.seqs[d][s:e] = ids[r, :e - s].cpu()
        st.finish_round(active, ends, eos_id, stop_at_eos)
        keep = [r for r, d in enumerate(active) if not st.done[d]]
        if keep:  # the finished block becomes clean context for the next one
            rows = [active[r] for r in keep]
            sel = torch.tensor(keep, device=device)
            sub = None if past is None else [(k[sel], v[sel], m[sel]) for k, v, m in past]
            _, new = forward_block(model, ids[sel], pos[sel], valid[sel], sub)
            remember(rows, new, valid[sel])


def answer_ids(seq: torch.Tensor, prompt_len: int, eos_id: int) -> List[int]:
    """The generated tokens of ``seq`` up to (not including) the first ``<eos>``."""
    out = []
    for t in seq[prompt_len:].tolist():
        if t == eos_id:
            break
        out.append(t)
    return out
