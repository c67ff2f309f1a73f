"""Recipes against the peers' formulas, written out here from their papers and docs: dllm's MDLM and
BD3LM losses (t per sequence, −α′/(1−α) weights, batch/sequence/token normalizations) and
dFactory's SFT transform (max_seq_len padding, labels, same_token_labels, masked-token mean CE)."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import dllm_masks as dm
from dllm_masks.integrations import recipes as R

VOCAB, MASK = 40, 1


class LookupModel(torch.nn.Module):
    """logits = table[input_ids]: depends on the (noisy) inputs, ignores attention."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0)))
        self.seen = None

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.seen = (input_ids, attention_mask, position_ids)
        return SimpleNamespace(logits=self.table[input_ids])


def _inputs(B=4, L=16):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (B, L), generator=g)
    plen = torch.tensor([3, 5, 2, 6])[:B]
    lens = torch.tensor([16, 12, 9, 14])[:B]
    pos = torch.arange(L)[None]
    labels = torch.where((pos >= plen[:, None]) & (pos < lens[:, None]), ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "labels": labels, "attention_mask": (pos < lens[:, None]).long()}


def _dllm_reference(logits, noisy, inputs, t, sched, norm):
    """dllm's MDLM/BD3LM loss on given masks: CE at masked tokens x w(t), normalized by type."""
    labels = inputs["labels"]
    b, l = labels.shape
    masked = noisy == MASK
    if sched == "linear":
        w = 1.0 / t
    else:  # cosine: α = 1 − cos(π/2 (1 − t)), α′ = −π/2 sin(π/2 (1 − t))
        w = (math.pi / 2) * torch.sin(math.pi / 2 * (1 - t)) / torch.cos(math.pi / 2 * (1 - t))
    w = w[:, None].expand(b, l)
    tok = F.cross_entropy(logits[masked], inputs["input_ids"][masked], reduction="none") * w[masked]
    cnt = (labels != -100).sum(1, keepdim=True).expand(b, l)[masked]
    return {"batch": tok.sum() / b, "sequence": (tok / cnt / b).sum(), "token": tok.sum() / (labels != -100).sum()}[norm]


@pytest.mark.parametrize("sched", ["linear", "cosine"])
@pytest.mark.parametrize("norm", ["batch", "sequence", "token"])
@pytest.mark.parametrize("bd3lm", [False, True])
def test_dllm_losses(sched, norm, bd3lm):
    inputs = _inputs()
    masker = R.dllm_masker(MASK, scheduler=sched, seed=3)
    model = LookupModel()
    loss = R.dllm_loss(model, inputs, masker, loss_normalization_type=norm, block_size=4 if bd3lm else None)
    x, mask4, pos = model.seen
    B, L = inputs["input_ids"].shape
    noisy = x[:, :L]
    if bd3lm:  # [x_t | x_0] rows, block-diffusion mask, positions repeat
        assert x.shape == (B, 2 * L) and torch.equal(x[:, L:], inputs["input_ids"]) and mask4.shape == (B, 1, 2 * L, 2 * L)
        assert torch.equal(pos[:, :L], pos[:, L:])
    sig = dm.Masker(MASK, sigma=dm.schedules.Schedule(sched), seed=3)(inputs["input_ids"], labels=inputs["labels"]).sigma
    t = sig.double() if sched == "linear" else 1 - torch.arccos(sig.double()) * 2 / math.pi
    ref = _dllm_reference(model.table[noisy].double(), noisy, inputs, t, sched, norm)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-4)
    assert not ((noisy == MASK) & (inputs["labels"] == -100)).any()


def test_dfactory_transform_and_loss():
    ids = list(range(5, 25))
    masker = dm.Masker(MASK, sigma=(0.3, 0.8), loss_weight=None, weight=2.0, seed=0)
    prio = [0] * 6 + [1, 1, 0, 1] * 3 + [0, 0]
    ex = R.dfactory_sft_transform(ids, 6, masker=masker, max_seq_len=32, pad_token_id=0, sample_id=7, priority=prio)
    assert ex["input_ids"].shape == (1, 32) and ex["attention_mask"][0].sum() == 20
    assert (ex["labels"][0, :6] == -100).all() and (ex["labels"][0, 20:] == -100).all()
    m = ex["input_ids"][0] == MASK
    assert torch.equal(ex["labels"][0][m], torch.tensor(ids + [0] * 12)[m]) and (ex["labels"][0][~m] == -100).all()
    again = R.dfactory_sft_transform(ids, 6, masker=masker, max_seq_len=32, pad_token_id=0, sample_id=7, priority=prio)
    assert torch.equal(again["input_ids"], ex["input_ids"])  # keyed by sample id, not by call order
    shifted = R.dfactory_sft_transform(ids, 6, masker=masker, max_seq_len=32, pad_token_id=0, sample_id=7,
                                       priority=prio, same_token_labels=False)
    assert torch.equal(shifted["labels"][0, :-1], ex["labels"][0, 1:]) and shifted["labels"][0, -1] == -100
    # dFactory's loss: mean CE over labelled tokens; = diffusion_loss(norm="masked"), shifted or not
    logits = torch.randn(1, 32, 30, generator=torch.Generator().manual_seed(0))
    mb = masker(torch.tensor([ids + [0] * 12]), maskable=((torch.arange(32) >= 6) & (torch.arange(32) < 20))[None],
                priority=torch.tensor([prio + [0] * 12]).bool(), sample_ids=torch.tensor([7]))
    assert torch.equal(mb.noisy_ids, ex["input_ids"])
    ce_same = F.cross_entropy(logits[0], ex["labels"][0], ignore_index=-100)
    assert float(dm.diffusion_loss(logits, mb, norm="masked")) == pytest.approx(float(ce_same), rel=1e-6)
    ce_shift = F.cross_entropy(logits[0], shifted["labels"][0], ignore_index=-100)
    assert float(dm.diffusion_loss(logits, mb, norm="masked", shift=True)) == pytest.approx(float(ce_shift), rel=1e-6)


def test_dfactory_one_sigma_per_sample_complementary():
    masker = dm.Masker(MASK, sigma=(0.3, 0.8), loss_weight=None, complementary=True, seed=1)
    sig = []
    for i in range(50):
        ex = R.dfactory_sft_transform(list(range(5, 45)), 0, masker=masker, max_seq_len=40, pad_token_id=0, sample_id=i)
        assert ex["input_ids"].shape == (2, 40)
        m = ex["input_ids"] == MASK
        assert not (m[0] & m[1]).any() and (m[0] | m[1]).all()  # complementary views
        sig.append(float(m[0].float().mean()))
    assert 0.3 - 0.15 < min(sig) and max(sig) < 0.8 + 0.15 and 0.45 < sum(sig) / 50 < 0.65
