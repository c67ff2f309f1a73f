"""Block-by-block diffusion decoding: fills every mask, never touches the prompt, matches training."""
from __future__ import annotations

import copy

import pytest
import torch

import _sft  # noqa: F401  (one thread)
from dllm_masks.blockdiff import BlockDiffAttention, decode_layout, training_layout
from dllm_masks.eval.decode import answer_ids, generate, transfer_schedule
from dllm_masks.train.model import DiffusionLM, ModelConfig

MASK, EOS, VOCAB = 1, 2, 50


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DiffusionLM(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, max_position=256))
    with torch.no_grad():  # make the eos logit small so that random weights generate long answers
        m.lm_head.weight[EOS] -= 5 * m.lm_head.weight[EOS].sign()
    return m.eval()


def test_transfer_schedule():
    assert transfer_schedule(32, 32) == [1] * 32
    assert transfer_schedule(10, 4) == [3, 3, 2, 2]
    assert transfer_schedule(3, 5) == [1, 1, 1, 0, 0]
    assert sum(transfer_schedule(29, 7)) == 29


@pytest.mark.parametrize("cache", [True, False], ids=["kv-cache", "recompute"])
@pytest.mark.parametrize("K,gen,steps", [
    (8, 20, 8),    # answer not a multiple of the block; one token per step
    (8, 16, 3),    # several tokens per step
    (4, 9, 1),     # a whole block at once
])
def test_fills_every_mask_and_keeps_prompt(model, K, gen, steps, cache):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (5, 8, 1, 13, 0)]  # 8: on a block edge
    outs = generate(model, prompts, mask_id=MASK, eos_id=EOS, block_size=K, gen_length=gen, steps_per_block=steps,
                    stop_at_eos=False, cache=cache)
    for p, o in zip(prompts, outs):
        assert o.shape == (len(p) + gen,)
        assert o[:len(p)].tolist() == p
        assert not bool((o == MASK).any())


def test_batched_equals_one_by_one(model):
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (3, 11, 7)]
    kw = dict(mask_id=MASK, eos_id=EOS, block_size=4, gen_length=10, steps_per_block=4, attention="sdpa_docs")
    together = generate(model, prompts, **kw)
    alone = [generate(model, [p], **kw)[0] for p in prompts]
    for a, b in zip(together, alone):
        assert torch.equal(a, b)
    dense = generate(model, prompts, **{**kw, "attention": "sdpa"})
    for a, b in zip(together, dense):
        assert torch.equal(a, b)


def test_kv_cache_gives_the_same_tokens(model, monkeypatch):
    import dllm_masks.train.model as M

    m64 = copy.deepcopy(model).double()  # float64: the two summation orders cannot flip an argmax
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (3, 17, 8, 30)]
    kw = dict(mask_id=MASK, eos_id=EOS, block_size=8, gen_length=21, steps_per_block=4, stop_at_eos=False)
    calls = []
    real = M.forward_block
    monkeypatch.setattr(M, "forward_block", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    a = generate(m64, prompts, cache=True, **kw)
    # prompt blocks (0 + 2 + 1 + 3 over 3 calls), then per round 4 steps + 1 cache write (none after the last)
    assert len(calls) == 3 + 3 * (4 + 1) + 4 and all(s[1] == 8 for s in calls)
    b = generate(m64, prompts, cache=False, **kw)
    assert len(calls) == 3 + 3 * (4 + 1) + 4  # the recompute path does not use the cache
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_sampling_and_eos_stop(model):
    prompts = [[5, 6, 7]]
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    kw = dict(mask_id=MASK, eos_id=EOS, block_size=4, gen_length=12, steps_per_block=2, temperature=1.0)
    a = generate(model, prompts, generator=g1, **kw)[0]
    b = generate(model, prompts, generator=g2, **kw)[0]
    assert torch.equal(a, b) and not bool((a == MASK).any())
    # a model that always predicts eos: the first block ends the answer, the rest is eos-filled
    class EosModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        def forward(self, ids, attn, idx):
            self.calls += 1
            out = torch.zeros(idx.numel(), VOCAB)
            out[:, EOS] = 1.0
            return out

    em = EosModel()
    out = generate(em, [[5, 6, 7, 8, 9]], mask_id=MASK, eos_id=EOS, block_size=4, gen_length=16, steps_per_block=4)[0]
    assert out[:5].tolist() == [5, 6, 7, 8, 9] and bool((out[5:] == EOS).all())
    assert em.calls == 3  # the first block (3 masked positions, 3 non-empty steps) only
    assert answer_ids(out, 5, EOS) == []


def test_decode_logits_match_training_layout(model):
    """The noisy block's logits under the decode layout equal those under the training layout."""
    K, L = 4, 14
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(3, VOCAB, (L,), generator=g)
    # current block 2: positions 8..11
    noisy = torch.randint(3, VOCAB, (L,), generator=g)
    noisy[8:12] = torch.tensor([MASK, 9, MASK, MASK])
    lay_t = training_layout(torch.tensor([0, L], dtype=torch.int32), K, views=1)
    out_t = model(torch.cat([noisy, clean]), BlockDiffAttention(lay_t, "sdpa"), torch.arange(8, 12))
    lay_d = decode_layout([8], [12], K)
    out_d = model(torch.cat([noisy[8:12], clean[:8]]), BlockDiffAttention(lay_d, "sdpa_docs"), torch.arange(0, 4))
    torch.testing.assert_close(out_t, out_d, rtol=1e-4, atol=1e-5)


def test_refusals(model):
    with pytest.raises(ValueError, match="prompts"):
        generate(model, [[MASK, 4]], mask_id=MASK, eos_id=EOS)
    with pytest.raises(ValueError, match="steps_per_block"):
        generate(model, [[4]], mask_id=MASK, eos_id=EOS, steps_per_block=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [[4]], mask_id=MASK, eos_id=EOS, temperature=-1)
