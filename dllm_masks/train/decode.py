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

from .. import validation as V
from ..blockdiff import BlockDiffAttention, decode_layout

__all__ = ["transfer_schedule", "generate", "answer_ids"]


def transfer_schedule(num_masked: int, steps: int) -> List[int]:
    """Tokens to unmask at each step: ``num_masked`` spread evenly, the remainder first (LLaDA)."""
    base, extra = divmod(num_masked, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


@torch.no_grad()
def generate(model, prompts: Sequence[Sequence[int]], *, mask_id: int, eos_id: int, block_size: int = 32,
             gen_length: int = 128, steps_per_block: int = 32, temperature: float = 0.0,
             attention: str = "auto", stop_at_eos: bool = True, generator: Optional[torch.Generator] = None,
             device=None, progress: bool = False) -> List[torch.Tensor]:
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
        Attention mode (see :class:`BlockDiffAttention`).
    stop_at_eos : bool
        Once a finished block holds ``<eos>`` after the prompt, fill the rest with ``<eos>``
        without running the model (training padded answers with ``<eos>`` the same way).
    generator : torch.Generator, optional
        For ``temperature > 0``.
    device : torch.device, optional
        Default: the model's.
    progress : bool

    Returns
    -------
    list of torch.Tensor, int64, [len(prompt) + gen_length] each, on the CPU: the prompt
    unchanged, then the generated tokens; no ``mask_id`` remains.
    """
    K = V.check_int("block_size", block_size, low=1)
    G = V.check_int("gen_length", gen_length, low=0)
    T = V.check_int("steps_per_block", steps_per_block, low=1)
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
    D = len(seqs)
    total = [s.numel() for s in seqs]
    block = [pl // K for pl in plen]  # current block of each document
    done = [G == 0 for _ in range(D)]
    was_training = model.training
    model.eval()
    rounds = max([-(-t // K) - b for t, b in zip(total, block)], default=0)
    bar = tqdm(total=rounds * T, desc="decode", disable=not progress, leave=False)
    try:
        while not all(done):
            active = [d for d in range(D) if not done[d]]
            starts = [block[d] * K for d in active]
            ends = [min(total[d], (block[d] + 1) * K) for d in active]
            sched = {d: transfer_schedule(int((seqs[d][s:e] == mask_id).sum()), T)
                     for d, s, e in zip(active, starts, ends)}
            for step in range(T):
                todo = [i for i, d in enumerate(active) if sched[d][step] > 0]
                bar.update(1)
                if not todo:
                    continue
                docs = [active[i] for i in todo]
                s_, e_ = [starts[i] for i in todo], [ends[i] for i in todo]
                lay = decode_layout(s_, e_, K, device=device)
                noisy = [seqs[d][s:e] for d, s, e in zip(docs, s_, e_)]
                clean = [seqs[d][:s] for d, s in zip(docs, s_)]
                ids = torch.cat(noisy + clean).to(device)
                n_noisy = sum(x.numel() for x in noisy)
                out_idx = torch.nonzero(ids[:n_noisy] == mask_id).squeeze(1)
                logits = model(ids, BlockDiffAttention(lay, attention), out_idx).float()
                logits[:, mask_id] = float("-inf")
                probs = torch.softmax(logits, dim=-1)
                if temperature > 0:
                    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).to(device)
                    pred = (logits.double() / temperature - torch.log(-torch.log(u.clamp_min(1e-20)))).argmax(-1)
                else:
                    pred = logits.argmax(-1)
                conf = probs.gather(1, pred[:, None]).squeeze(1)
                # owner document of each masked position
                lens = torch.tensor([x.numel() for x in noisy], device=device)
                owner = torch.repeat_interleave(torch.arange(len(docs), device=device), lens)[out_idx]
                offset = (torch.cumsum(lens, 0) - lens)[owner]
                for j, d in enumerate(docs):
                    sel = torch.nonzero(owner == j).squeeze(1)
                    k = min(sched[d][step], sel.numel())
                    top = sel[torch.topk(conf[sel], k).indices]
                    pos = (out_idx[top] - offset[top]).cpu() + s_[j]
                    seqs[d][pos] = pred[top].cpu()
            for d, e in zip(active, ends):
                block[d] += 1
                gen = seqs[d][plen[d]:e]
                if e >= total[d]:
                    done[d] = True
                elif stop_at_eos and bool((gen == eos_id).any()):
                    seqs[d][e:] = eos_id
                    done[d] = True
    finally:
        bar.close()
        model.train(was_training)
    return seqs


def answer_ids(seq: torch.Tensor, prompt_len: int, eos_id: int) -> List[int]:
    """The generated tokens of ``seq`` up to (not including) the first ``<eos>``."""
    out = []
    for t in seq[prompt_len:].tolist():
        if t == eos_id:
            break
        out.append(t)
    return out
