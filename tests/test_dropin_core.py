"""dm.schedules, dm.diffusion_loss and dm.Masker: schedule weights and their derivation, the four
norms against the peers' formulas written out here, accumulation/DDP equivalence, the "masked"
trap, shifted labels, and the masker's key discipline (fresh, rank-distinct, resumable)."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import dllm_masks as dm
from dllm_masks import schedules as S
from dllm_masks.loss import NORMS, loss_normalizer
from dllm_masks.testing import assert_same

SCHEDS = [S.linear(), S.cosine(), S.polynomial(2.0), S.polynomial(3.0)]


# ------------------------------------------------------------------------------------------- schedules
def test_cosine_weight_at_0_3_is_not_one_over_sigma():
    c = S.cosine()
    assert round(float(c.weight(0.3)), 2) == 3.08
    assert round(1.0 / float(c.sigma(0.3)), 2) == 2.20
    lin = S.linear()
    assert float(lin.weight(0.3)) == pytest.approx(1 / 0.3)
    assert float(lin.complement_weight(0.3)) == pytest.approx(1 / 0.7)
    assert float(S.polynomial(3.0).weight(0.4)) == pytest.approx(3.0 / 0.4)


@pytest.mark.parametrize("sch", SCHEDS, ids=repr)
def test_alpha_prime_is_the_derivative(sch):
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    num = (sch.alpha(t + h) - sch.alpha(t - h)) / (2 * h)
    assert torch.allclose(sch.alpha_prime(t), num, atol=1e-6)
    assert float(sch.alpha(0.0)) == pytest.approx(1.0) and float(sch.alpha(1.0)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("sch", SCHEDS, ids=repr)
def test_both_view_weights_are_unbiased_for_the_nelbo(sch):
    """E_t[w(t) f(σ(t))] = ∫ f(σ)/σ dσ (σ view) and E_t[w_c(t) f(α(t))] = ∫ f(s)/s ds (complement):
    each view's weighted loss estimates the same σ-integral the linear-schedule NELBO has."""
    f = lambda s: s * (1.3 - s) ** 2  # noqa: E731 - any smooth f with f(0) = 0
    n = 400_001
    t = torch.linspace(0.0, 1.0, n, dtype=torch.float64)[1:-1]
    target = torch.trapezoid((f(t) / t), t)  # ∫_0^1 f(s)/s ds
    view0 = torch.trapezoid(sch.weight(t) * f(sch.sigma(t)), t)
    view1 = torch.trapezoid(sch.complement_weight(t) * f(sch.alpha(t)), t)
    assert float(view0) == pytest.approx(float(target), rel=2e-3)
    assert float(view1) == pytest.approx(float(target), rel=2e-3)


def test_schedule_sampling_and_refusals():
    t, sig = S.cosine(eps=0.01).sample(1000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float64 and sig.dtype == torch.float32 and float(t.min()) >= 0.01
    assert torch.allclose(sig.double(), S.cosine().sigma(t), atol=1e-6)
    with pytest.raises(ValueError, match="^kind"):
        S.Schedule("sqrt")
    with pytest.raises(ValueError, match="^eps"):
        S.linear(eps=1.0)
    with pytest.raises(ValueError, match="^power"):
        S.polynomial(0.0)


# ------------------------------------------------------------------------------------------- loss
def _padded_batch(B=4, L=12, vocab=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, L), generator=g)
    labels = ids.clone()
    plen = torch.tensor([2, 3, 1, 4][:B])
    lens = torch.tensor([12, 9, 7, 11][:B])
    pos = torch.arange(L)[None]
    labels[(pos < plen[:, None]) | (pos >= lens[:, None])] = -100
    attn = (pos < lens[:, None]).long()
    return ids, labels, attn


def test_norms_match_the_peers_formulas_padded():
    ids, labels, attn = _padded_batch()
    m = dm.Masker(1, complementary=True, sigma=(0.3, 0.8), loss_weight="sigma", seed=3)
    out = m(ids, attention_mask=attn, labels=labels)
    vocab = 29
    logits = torch.randn(*out.noisy_ids.shape, vocab, generator=torch.Generator().manual_seed(1))
    # written out from the definitions (LLaDA / dllm): per-token CE at masked tokens, weight w
    ce = F.cross_entropy(logits.reshape(-1, vocab), out.labels.reshape(-1), reduction="none",
                         ignore_index=-100).reshape(out.labels.shape)
    w = out.loss_weight
    num = (w * ce).sum()
    n_masked = (out.labels != -100).sum()
    cnt = out.maskable.sum(1)  # per noisy sequence
    R = out.labels.shape[0]
    expect = {"masked": num / n_masked, "maskable": num / cnt.sum(),
              "sequence": ((w * ce).sum(1) / cnt.clamp(min=1)).sum() / R, "batch": num / R}
    for norm, e in expect.items():
        got = dm.diffusion_loss(logits, out, norm=norm)
        assert float(got) == pytest.approx(float(e), rel=1e-5), norm
    # complementary: every answer token is masked exactly once over the two views
    assert int(n_masked) == int((labels != -100).sum()) and int(cnt.sum()) == 2 * int(n_masked)


def test_masked_trap_sigma_weight_vs_dfactory():
    """loss_norm='masked' with 1/σ weights is not dFactory's loss: dFactory averages *unweighted*
    CE over the masked tokens. With uniform logits every CE is ln(vocab) = 4.42 (vocab 83)."""
    vocab = 83
    ids = torch.randint(3, vocab, (8, 64), generator=torch.Generator().manual_seed(0))
    logits = torch.zeros(8, 64, vocab)
    weighted = dm.Masker(1, sigma=(0.3, 0.8), loss_weight="sigma", seed=0)(ids, prompt_lens=torch.full((8,), 8))
    dfactory = dm.Masker(1, sigma=(0.3, 0.8), loss_weight=None, seed=0)(ids, prompt_lens=torch.full((8,), 8))
    assert torch.equal(weighted.masked, dfactory.masked)
    l_df = float(dm.diffusion_loss(logits, dfactory, norm="masked"))
    l_w = float(dm.diffusion_loss(logits, weighted, norm="masked"))
    assert round(l_df, 2) == 4.42 == round(math.log(vocab), 2)
    mean_inv_sigma = float(weighted.loss_weight[weighted.masked].mean())
    assert l_w == pytest.approx(l_df * mean_inv_sigma, rel=1e-5)
    assert round(l_w, 2) == 7.75 and l_w > 1.5 * l_df  # the trap: 1.75x dFactory's number on this batch


@pytest.mark.parametrize("norm", list(NORMS))
def test_accumulation_and_ddp_equal_one_big_batch(norm):
    ids, labels, attn = _padded_batch(B=4)
    out = dm.Masker(1, complementary=True, sigma=S.cosine(), seed=5)(ids, attention_mask=attn, labels=labels)
    vocab = 29
    base = torch.randn(*out.noisy_ids.shape, vocab, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    big = base.clone().requires_grad_(True)
    dm.diffusion_loss(big, out, norm=norm).backward()
    # the same 8 noisy rows as 2 ranks x 2 micro-batches of 2 rows each (views stay row-aligned)
    parts = [torch.tensor(rows) for rows in ([0, 4], [1, 5], [2, 6], [3, 7])]
    sub = [out._replace(noisy_ids=out.noisy_ids[r], labels=out.labels[r], masked=out.masked[r],
                        loss_weight=out.loss_weight[r], maskable=out.maskable[r],
                        cu_seqlens=torch.arange(3, dtype=torch.int32) * 12) for r in parts]
    D = sum(loss_normalizer(b, norm) for b in sub)
    world = 2
    grads = torch.zeros_like(base)
    for rank in range(world):
        g_rank = torch.zeros_like(base)
        for b, r in list(zip(sub, parts))[rank * 2:(rank + 1) * 2]:
            x = base[r].clone().requires_grad_(True)
            (dm.diffusion_loss(x, b, norm=norm, normalizer=D) * world).backward()
            g_rank[r] += x.grad
        grads += g_rank / world  # DDP averages over ranks
    assert torch.allclose(grads, big.grad, atol=1e-12)


def test_dfactory_mean_of_micro_batch_means():
    ids, labels, attn = _padded_batch(B=4)
    m = dm.Masker(1, sigma=(0.3, 0.8), loss_weight=None, seed=9)
    micro = [m(ids[:2], labels=labels[:2]), m(ids[2:], labels=labels[2:])]
    logits = [torch.randn(2, 12, 29, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    ours = sum(dm.diffusion_loss(lg, b, norm="masked") / 2 for lg, b in zip(logits, micro))
    means = [F.cross_entropy(lg.reshape(-1, 29), b.labels.reshape(-1), ignore_index=-100) for lg, b in zip(logits, micro)]
    assert float(ours) == pytest.approx(float(sum(means) / 2), rel=1e-6)


def test_shift_uses_the_previous_position():
    ids, labels, attn = _padded_batch(B=3)
    out = dm.Masker(1, sigma=(0.5, 0.9), seed=1, loss_weight=None)(ids, labels=labels)
    logits = torch.randn(3, 12, 29, generator=torch.Generator().manual_seed(4))
    shifted = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # Dream's right shift
    assert float(dm.diffusion_loss(logits, out, norm="masked", shift=True)) == pytest.approx(
        float(dm.diffusion_loss(shifted, out, norm="masked")), rel=1e-6)
    # packed: the shift stays inside each sequence
    packed = dm.Masker(1, sigma=(0.5, 0.9), seed=1, loss_weight=None)(
        ids.reshape(-1), cu_seqlens=torch.tensor([0, 12, 24, 36]), labels=labels.reshape(-1))
    assert float(dm.diffusion_loss(logits.reshape(36, 29), packed, norm="masked", shift=True)) == pytest.approx(
        float(dm.diffusion_loss(shifted.reshape(36, 29), packed, norm="masked")), rel=1e-6)


@pytest.mark.parametrize("norm", list(NORMS))
def test_packed_equals_padded_with_sample_ids(norm):
    ids, labels, attn = _padded_batch(B=4)
    lens = attn.sum(1)
    sid = torch.tensor([10, 11, 12, 13])
    m = dm.Masker(1, complementary=True, block_size=4, sigma=S.cosine(), loss_weight="token", weight=3.0, seed=2)
    prio = (ids % 3 == 0)
    pad = m(ids, attention_mask=attn, labels=labels, priority=prio, sample_ids=sid)
    keep = attn.bool()
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    pk = m(ids[keep], cu_seqlens=cu, labels=labels[keep], priority=prio[keep], sample_ids=sid)
    keep2 = keep.repeat(2, 1)
    assert torch.equal(pad.noisy_ids[keep2], pk.noisy_ids) and torch.equal(pad.loss_weight[keep2], pk.loss_weight)
    logits = torch.randn(8, 12, 29, generator=torch.Generator().manual_seed(0))
    assert float(dm.diffusion_loss(logits, pad, norm=norm)) == pytest.approx(
        float(dm.diffusion_loss(logits[keep2], pk, norm=norm)), rel=1e-5)


def test_block_diffusion_rows_are_accepted():
    ids, labels, attn = _padded_batch(B=3)
    out = dm.Masker(1, complementary=True, block_size=4, seed=0)(ids, labels=labels)
    rows = torch.randn(3, 3 * 12, 29)  # [view 0 | view 1 | x_0] per sequence
    views = torch.cat([rows[:, :12], rows[:, 12:24]])  # view-major [2B, L]
    assert float(dm.diffusion_loss(rows, out, norm="sequence")) == float(dm.diffusion_loss(views, out, norm="sequence"))
    pk = dm.Masker(1, complementary=True, seed=0)(ids.reshape(-1), cu_seqlens=torch.tensor([0, 12, 24, 36]))
    flat = torch.randn(3 * 36, 29)
    assert float(dm.diffusion_loss(flat, pk, norm="masked")) == float(dm.diffusion_loss(flat[:72], pk, norm="masked"))
    with pytest.raises(ValueError, match="^logits"):
        dm.diffusion_loss(torch.randn(3, 13, 29), out, norm="masked")


def test_loss_refusals():
    ids, labels, attn = _padded_batch(B=2)
    out = dm.priority_mask(ids, 0.5, mask_token_id=1, seed=0)
    with pytest.raises(ValueError, match="^norm"):
        dm.diffusion_loss(torch.randn(2, 12, 29), out, norm="tokens")
    with pytest.raises(ValueError, match="^batch"):
        dm.diffusion_loss(torch.randn(2, 12, 29), out, norm="maskable")
    with pytest.raises(TypeError, match="^normalizer"):
        dm.diffusion_loss(torch.randn(2, 12, 29), out, norm="masked", normalizer="3")


# ------------------------------------------------------------------------------------------- masker
def test_masker_fresh_masks_every_call_and_per_rank():
    ids = torch.randint(3, 50, (4, 64), generator=torch.Generator().manual_seed(0))
    a = dm.Masker(1, seed=7, rank=0, world_size=2)
    b = dm.Masker(1, seed=7, rank=1, world_size=2)
    a0, a1, b0 = a(ids), a(ids), b(ids)
    assert not torch.equal(a0.masked, a1.masked) and not torch.equal(a0.masked, b0.masked)
    assert not torch.equal(a0.sigma, a1.sigma)
    again = dm.Masker(1, seed=7, rank=0, world_size=2)
    assert_same(again(ids), a0, "same seed, rank and step")
    # rank r's call c and rank r+1's call c-? never share keys: all (call, rank) keys are distinct
    seen = set()
    for rank in range(2):
        m = dm.Masker(1, seed=7, rank=rank, world_size=2)
        for _ in range(3):
            seen.add(m(ids).masked.numpy().tobytes())
    assert len(seen) == 6


def test_masker_rank_defaults_from_torch_distributed(monkeypatch):
    import torch.distributed as dist

    ids = torch.randint(3, 50, (2, 32), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 3)
    m = dm.Masker(1, seed=1)
    assert (m.rank, m.world_size) == (1, 3)
    assert_same(m(ids), dm.Masker(1, seed=1, rank=1, world_size=3)(ids), "from torch.distributed")


def test_masker_resume_continues_the_stream():
    ids = torch.randint(3, 50, (3, 40), generator=torch.Generator().manual_seed(0))
    full = dm.Masker(1, complementary=True, block_size=8, sigma=S.cosine(), seed=4)
    ref = [full(ids) for _ in range(5)]
    first = dm.Masker(1, complementary=True, block_size=8, sigma=S.cosine(), seed=4)
    for _ in range(3):
        first(ids)
    state = first.state_dict()
    resumed = dm.Masker(1, complementary=True, block_size=8, sigma=S.cosine(), seed=4)
    resumed.load_state_dict(state)
    for k in (3, 4):
        assert_same(resumed(ids), ref[k], f"call {k}")
    with pytest.raises(ValueError, match="^state"):
        dm.Masker(1, seed=5).load_state_dict(state)


def test_masker_sample_ids_mode_is_order_free():
    ids = torch.randint(3, 50, (4, 30), generator=torch.Generator().manual_seed(0))
    sid = torch.tensor([5, 6, 7, 8])
    m = dm.Masker(1, seed=3, sigma=(0.2, 0.9))
    a = m(ids, sample_ids=sid)
    perm = torch.tensor([2, 0, 3, 1])
    b = m(ids[perm], sample_ids=sid[perm])  # a later call, another order
    assert torch.equal(a.noisy_ids[perm], b.noisy_ids) and torch.equal(a.sigma[perm], b.sigma)


def test_masker_maskable_sources_agree():
    ids = torch.randint(3, 50, (3, 20), generator=torch.Generator().manual_seed(0))
    plen = torch.tensor([4, 0, 7])
    labels = ids.clone()
    labels[torch.arange(20)[None] < plen[:, None]] = -100
    mk = lambda: dm.Masker(1, seed=2, sigma=(0.4, 0.9), complementary=True)  # noqa: E731
    a, b = mk()(ids, labels=labels), mk()(ids, prompt_lens=plen)
    c = mk()(ids, maskable=labels != -100)
    assert_same(a, b, "labels vs prompt_lens")
    assert_same(a, c, "labels vs maskable")
    assert not (a.masked & (labels == -100).repeat(2, 1)).any()
    with pytest.raises(ValueError, match="^prompt_lens"):
        mk()(ids, labels=labels, prompt_lens=plen)


def test_masker_schedule_weights_and_priority():
    ids = torch.randint(3, 50, (6, 48), generator=torch.Generator().manual_seed(0))
    cos = S.cosine()
    m = dm.Masker(1, complementary=True, block_size=16, sigma=cos, loss_weight=cos, seed=0)
    out = m(ids)
    sig = out.sigma.double()
    t = 1.0 - torch.arccos(sig) * 2 / math.pi  # σ = cos(π/2 (1 − t))
    seg = (torch.arange(6)[:, None] * 3 + torch.arange(48)[None] // 16)
    w0, w1 = cos.weight(t)[seg], cos.complement_weight(t)[seg]
    got0, got1 = out.loss_weight[:6], out.loss_weight[6:]
    assert torch.allclose(got0[out.masked[:6]].double(), w0[out.masked[:6]], rtol=1e-4)
    assert torch.allclose(got1[out.masked[6:]].double(), w1[out.masked[6:]], rtol=1e-4)
    # hard priority: a segment masks its priority tokens before any other
    prio = ids % 2 == 0
    hard = dm.Masker(1, weight=math.inf, sampling="exact", sigma=(0.1, 0.3), seed=0)(ids, priority=prio)
    assert not (hard.masked & ~prio).any() or (hard.masked | ~prio).all()
    with pytest.raises(ValueError, match="^loss_weight"):
        dm.Masker(1, sigma=(0.1, 0.9), loss_weight=cos)
    with pytest.raises(ValueError, match="^sigma"):
        dm.Masker(1, sigma=(0.9, 0.1))


@settings(max_examples=30)
@given(lens=st.lists(st.integers(0, 37), min_size=1, max_size=5), K=st.sampled_from([None, 1, 3, 32]),
       comp=st.booleans(), kind=st.sampled_from(["linear", "cosine", "polynomial"]), seed=st.integers(0, 2**31))
def test_masker_padded_equals_packed_drawn(lens, K, comp, kind, seed):
    """With sample ids, padded rows (padding excluded) and the packed batch get the same masks and
    weights, whatever the lengths, block size and schedule."""
    B, L = len(lens), max(max(lens), 1)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (B, L), generator=g)
    prio = torch.rand(B, L, generator=g) < 0.3
    attn = torch.arange(L)[None] < torch.tensor(lens)[:, None]
    sch = S.Schedule(kind, power=2.0)
    m = dm.Masker(1, complementary=comp, block_size=K, sigma=sch, loss_weight="token", weight=2.5, seed=seed)
    sid = torch.arange(B) * 7 + 3
    pad = m(ids, attention_mask=attn, priority=prio, sample_ids=sid)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(lens).cumsum(0)])
    pk = m(ids[attn], cu_seqlens=cu, priority=prio[attn], sample_ids=sid)
    keep = attn.repeat(2 if comp else 1, 1)
    assert torch.equal(pad.noisy_ids[keep], pk.noisy_ids) and torch.equal(pad.masked[keep], pk.masked)
    assert torch.equal(pad.loss_weight[keep], pk.loss_weight) and torch.equal(pad.maskable[keep], pk.maskable)
    assert bool((pad.loss_weight[~pad.masked] == 0).all()) and bool((pad.loss_weight[pad.masked] > 0).all())
