"""priority_mask: the docs/design.md contract held against the reference (the oracle) and the dispatcher.

Every backend's bit-equality with the reference (golden vectors, awkward shapes, hypothesis
batches) is one suite in test_conformance.py; kernel-specific checks live in
test_priority_mask_cpp.py and test_priority_mask_triton.py.
"""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import dllm_masks as dm
from dllm_masks.rates import exact_counts
from dllm_masks.testing import assert_same, packed_case, random_cases

def ref(**kw):
    return dm.priority_mask(**kw, backend="ref")


def views(out, T, V):
    return [out.masked[v * T:(v + 1) * T] for v in range(V)]


def seq_of(cu):
    lens = (cu[1:] - cu[:-1]).long()
    return torch.repeat_interleave(torch.arange(len(lens)), lens)


def pos_of(cu):
    s = seq_of(cu)
    return torch.arange(int(cu[-1])) - cu.long()[s]


# --------------------------------------------------------------------------------------------
# Statistical properties: the marginal masking rate is σ
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight", [2.0, 0.5, 1.0])
def test_empirical_rates_match_q_and_sigma(weight):
    """Over many seeds the masked fraction of each group matches q0, q1 and the total matches σ (5 SE)."""
    L, B, reps = 200, 8, 50
    g = torch.Generator().manual_seed(0)
    cu = torch.arange(B + 1, dtype=torch.int32) * L
    prio = torch.rand(B * L, generator=g) < 0.3
    sigma = torch.linspace(0.1, 0.9, B)
    plen = torch.full((B,), 20)
    ids = torch.arange(B * L)
    counts = torch.zeros(B, 2)
    total = torch.zeros(B)
    for seed in range(reps):
        out = ref(input_ids=ids, sigma=sigma, cu_seqlens=cu, prompt_lens=plen, priority=prio, weight=weight,
                  mask_token_id=-1, seed=seed)
        m = out.masked.view(B, L).float()
        p = prio.view(B, L).float()
        counts[:, 1] += (m * p).sum(1)
        counts[:, 0] += (m * (1 - p)).sum(1)
        total += m.sum(1)
    mk = torch.ones(B, L, dtype=torch.bool)
    mk[:, :20] = False
    n1 = (prio.view(B, L) & mk).sum(1).double()
    n0 = mk.sum(1).double() - n1
    q = out.rates
    for grp, n in ((0, n0), (1, n1)):
        expect = q[:, grp] * n * reps
        se = torch.sqrt(n * reps * q[:, grp] * (1 - q[:, grp])).clamp(min=1e-9)
        assert bool(((counts[:, grp].double() - expect).abs() <= 5 * se + 1e-9).all()), (grp, counts[:, grp], expect)
    N = mk.sum(1).double()
    expect = sigma.double() * N * reps
    se = torch.sqrt((n0 * q[:, 0] * (1 - q[:, 0]) + n1 * q[:, 1] * (1 - q[:, 1])) * reps)
    assert bool(((total.double() - expect).abs() <= 5 * se).all())
    assert torch.allclose(n1 * q[:, 1] + n0 * q[:, 0], sigma.double() * N, atol=1e-9 * 200)


# --------------------------------------------------------------------------------------------
# Structural invariants, over hypothesis-drawn inputs
# --------------------------------------------------------------------------------------------
def _maskable(kw):
    T = kw["input_ids"].numel()
    cu = kw["cu_seqlens"]
    if kw.get("prompt_lens") is not None:
        return pos_of(cu) >= kw["prompt_lens"][seq_of(cu)]
    if kw.get("maskable") is not None:
        return kw["maskable"].bool()
    return torch.ones(T, dtype=torch.bool)


def _segments(kw):
    cu = kw["cu_seqlens"]
    K = kw.get("block_size")
    s = seq_of(cu)
    if not K:
        return s, cu.numel() - 1
    lens = (cu[1:] - cu[:-1]).long()
    nb = (lens + K - 1) // K
    start = torch.cumsum(nb, 0) - nb
    return start[s] + pos_of(cu) // K, int(nb.sum())


@settings(max_examples=150)
@given(kw=random_cases())
def test_invariants(kw):
    out = ref(**kw)
    ids = kw["input_ids"]
    T = ids.numel()
    mk = _maskable(kw)
    comp = kw["complementary"]
    V = 2 if comp else 1
    assert out.masked.shape == (V * T,) and out.noisy_ids.dtype == ids.dtype and out.labels.dtype == torch.int64
    mv = views(out, T, V)
    # masks only touch maskable tokens; the two views partition them
    for m in mv:
        assert not bool((m & ~mk).any())
    if comp:
        assert torch.equal(mv[0] ^ mv[1], mk) and not bool((mv[0] & mv[1]).any())
    # noisy ids, labels and weights agree with the mask
    ids_v = ids.repeat(V)
    assert torch.equal(out.noisy_ids, torch.where(out.masked, torch.full_like(ids_v, kw["mask_token_id"]), ids_v))
    assert torch.equal(out.labels, torch.where(out.masked, ids_v.long(), torch.full_like(ids_v.long(), -100)))
    seg, S = _segments(kw)
    assert out.rates.shape == (S, 2) and out.sigma.shape == (S,)
    if kw["loss_weight"] is None:
        assert out.loss_weight is None
    else:
        lw = out.loss_weight
        assert lw.dtype == torch.float32 and bool((lw[~out.masked] == 0).all())
        if kw["loss_weight"] == "sigma":
            s = out.sigma.double()[seg]
            want = [1.0 / s, 1.0 / (1.0 - s)]
        else:
            q = out.rates[seg, (kw["priority"] & mk).long()] if T else torch.zeros(0, dtype=torch.float64)
            want = [1.0 / q, 1.0 / (1.0 - q)]
        for v, m in enumerate(mv):
            assert torch.equal(lw[v * T:(v + 1) * T][m], want[v][m].float())
    # the rates conserve σ per segment
    n = torch.zeros(S).index_add_(0, seg, mk.float()).double()
    n1 = torch.zeros(S).index_add_(0, seg, (mk & kw["priority"]).float()).double()
    q = out.rates
    assert bool(((n1 * q[:, 1] + (n - n1) * q[:, 0] - out.sigma.double() * n).abs() <= 1e-9 * n.clamp(min=1)).all())
    if kw["sampling"] == "exact":
        k0, k1 = exact_counts(n.long(), n1.long(), out.sigma, q)
        m0 = mv[0].float()
        got1 = torch.zeros(S).index_add_(0, seg, m0 * kw["priority"].float()).long()
        got0 = torch.zeros(S).index_add_(0, seg, m0 * (1 - kw["priority"].float())).long()
        assert torch.equal(got1, k1) and torch.equal(got0, k0)


@pytest.mark.parametrize("block_size", [None, 8])
def test_exact_hard_sample_takes_priority_first(block_size):
    kw = packed_case([64, 100, 33], 5, weight=math.inf, sampling="exact", block_size=block_size, prio_rate=0.4)
    out = ref(**kw)
    mk = _maskable(kw)
    pr = kw["priority"] & mk
    seg, S = _segments(kw)
    for s in range(S):
        sel = seg == s
        m, p = out.masked[sel], pr[sel]
        if bool((m & ~p).any()):  # an ordinary token is masked only once every priority token is
            assert bool(m[p].all())
    kw["weight"] = 0.0  # reverse hard: ordinary tokens first
    out = ref(**kw)
    for s in range(S):
        sel = seg == s
        m, p, o = out.masked[sel], pr[sel], (mk & ~kw["priority"])[sel]
        if bool((m & p).any()):
            assert bool(m[o].all())


def test_seeds_and_offsets():
    kw = packed_case([300, 200], 1, weight=2.0)
    a = ref(**kw)
    assert_same(a, ref(**kw), "same seed")
    assert not torch.equal(a.masked, ref(**{**kw, "seed": kw["seed"] + 1}).masked)
    assert not torch.equal(a.masked, ref(**{**kw, "seq_offset": 2}).masked)
    # seq_offset = 1 shifts keys: sequence 0 of the shifted batch is keyed like sequence 1 here
    cu1 = torch.tensor([0, 200], dtype=torch.int32)
    kw1 = dict(kw, input_ids=kw["input_ids"][300:], cu_seqlens=cu1, sigma=kw["sigma"][1:],
               prompt_lens=kw["prompt_lens"][1:], priority=kw["priority"][300:], seq_offset=1)
    assert torch.equal(ref(**kw1).masked, a.masked[300:])
    # a seed is a uint64: -1 and 2^64 - 1 are the same key; tensors and ints agree
    assert torch.equal(ref(**{**kw, "seed": -1}).masked, ref(**{**kw, "seed": 2**64 - 1}).masked)
    assert torch.equal(ref(**{**kw, "seed": torch.tensor(-1)}).masked, ref(**{**kw, "seed": -1}).masked)
    assert torch.equal(ref(**{**kw, "seq_offset": torch.tensor(7)}).masked, ref(**{**kw, "seq_offset": 7}).masked)


@settings(max_examples=30)
@given(lengths=st.lists(st.integers(0, 50), min_size=1, max_size=6), perm_seed=st.integers(0, 1000),
       sampling=st.sampled_from(["bernoulli", "exact"]), block=st.sampled_from([None, 4]))
def test_sample_ids_make_masks_independent_of_packing(lengths, perm_seed, sampling, block):
    B = len(lengths)
    g = torch.Generator().manual_seed(perm_seed)
    seqs = [torch.randint(5, 999, (n,), generator=g) for n in lengths]
    prios = [torch.rand(n, generator=g) < 0.3 for n in lengths]
    sids = torch.randint(0, 2**62, (B,), generator=g)
    nseg = [1 if not block else (n + block - 1) // block for n in lengths]
    sig = [torch.rand(k, generator=g) for k in nseg]

    def run(order):
        cu = torch.tensor([0] + [lengths[i] for i in order]).cumsum(0).to(torch.int32)
        sigma = torch.cat([sig[i] for i in order]) if block else torch.stack([sig[i][0] for i in order])
        out = ref(input_ids=torch.cat([seqs[i] for i in order]), sigma=sigma, cu_seqlens=cu,
                  priority=torch.cat([prios[i] for i in order]), weight=2.0, mask_token_id=0, seed=9,
                  sample_ids=sids[list(order)], sampling=sampling, block_size=block, seq_offset=perm_seed)
        parts = torch.split(out.masked, [lengths[i] for i in order])
        return {i: p for i, p in zip(order, parts)}

    a = run(list(range(B)))
    b = run(torch.randperm(B, generator=g).tolist())
    for i in range(B):
        assert torch.equal(a[i], b[i])


def test_padded_agrees_with_packed():
    B, L = 3, 40
    lens = torch.tensor([40, 17, 0])
    kw = packed_case([40, 40, 40], 4, weight=2.0, complementary=True, loss_weight="sigma", prompt=False)
    valid = torch.arange(L)[None, :] < lens[:, None]
    plen = torch.tensor([5, 3, 0])
    maskable = valid & (torch.arange(L)[None, :] >= plen[:, None])
    padded = ref(input_ids=kw["input_ids"].view(B, L), sigma=kw["sigma"], maskable=maskable,
                 priority=kw["priority"].view(B, L), weight=2.0, complementary=True, loss_weight="sigma",
                 mask_token_id=3, seed=kw["seed"])
    packed = ref(input_ids=kw["input_ids"], sigma=kw["sigma"], cu_seqlens=kw["cu_seqlens"], maskable=maskable.view(-1),
                 priority=kw["priority"], weight=2.0, complementary=True, loss_weight="sigma", mask_token_id=3,
                 seed=kw["seed"])
    assert padded.noisy_ids.shape == (2 * B, L)
    assert torch.equal(padded.masked.view(-1), packed.masked)
    assert torch.equal(padded.noisy_ids.view(-1), packed.noisy_ids)
    assert torch.equal(padded.loss_weight.view(-1), packed.loss_weight)
    assert torch.equal(padded.cu_seqlens, torch.arange(2 * B + 1, dtype=torch.int32) * L)
    # padding (not maskable) is never masked, in either view
    assert not bool(padded.masked.view(2, B, L)[:, ~valid].any())
    # prompt lengths on a padded batch are the same as a maskable prompt mask (padding stays unmasked
    # only through maskable, so compare on sequence 0, which has no padding)
    pl = ref(input_ids=kw["input_ids"].view(B, L), sigma=kw["sigma"], prompt_lens=plen,
             priority=kw["priority"].view(B, L), weight=2.0, mask_token_id=3, seed=kw["seed"])
    assert torch.equal(pl.masked[0], padded.masked[0])


def test_per_block_segments_conserve_their_own_sigma():
    K = 32
    kw = packed_case([100, 64, 5], 2, weight=2.0, block_size=K, sampling="exact", prompt=False)
    out = ref(**kw)
    seg, S = _segments(kw)
    assert S == 4 + 2 + 1 and out.rates.shape == (S, 2)
    got = torch.zeros(S).index_add_(0, seg, out.masked.float())
    n = torch.zeros(S).index_add_(0, seg, torch.ones(seg.numel()))
    want = torch.floor(kw["sigma"].double() * n.double() + 0.5)
    assert torch.equal(got.double(), want)


def test_complement_realises_one_minus_sigma():
    kw = packed_case([1000, 1000], 8, weight=2.0, complementary=True, sampling="exact", prompt=False,
                     sigma=torch.tensor([0.3, 0.75]))
    out = ref(**kw)
    m = out.masked.view(2, 2, 1000).float().mean(-1)
    assert torch.allclose(m[0], torch.tensor([0.3, 0.75]), atol=1e-3)
    assert torch.allclose(m[1], torch.tensor([0.7, 0.25]), atol=1e-3)
    assert out.cu_seqlens.tolist() == [0, 1000, 2000, 3000, 4000]


# --------------------------------------------------------------------------------------------
# Valid edge cases
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [
    dict(lengths=[], why="empty batch"),
    dict(lengths=[0, 0], why="only empty sequences"),
    dict(lengths=[5, 7], prompt_lens=torch.tensor([5, 7]), why="all-prompt sequences"),
    dict(lengths=[9, 4], sigma=torch.tensor([0.0, 0.0]), why="sigma 0"),
    dict(lengths=[9, 4], sigma=torch.tensor([1.0, 1.0]), why="sigma 1"),
    dict(lengths=[9, 4], weight=0.0, why="w = 0"),
    dict(lengths=[9, 4], weight=math.inf, why="w = inf"),
], ids=lambda c: c["why"])
@pytest.mark.parametrize("sampling", ["bernoulli", "exact"])
def test_valid_edge_cases(case, sampling):
    case = dict(case)
    lengths = case.pop("lengths")
    case.pop("why")
    kw = packed_case(lengths, 1, complementary=True, loss_weight="token", sampling=sampling, **case)
    out = ref(**kw)
    T = sum(lengths)
    mk = _maskable(kw)
    assert out.masked.shape == (2 * T,)
    sig = out.sigma
    m0, m1 = views(out, T, 2)
    if T and bool((sig == 0).all()):
        assert not bool(m0.any()) and torch.equal(m1, mk)
    if T and bool((sig == 1).all()):
        assert torch.equal(m0, mk) and not bool(m1.any())
    if not bool(mk.any()):
        assert not bool(out.masked.any()) and bool((out.loss_weight == 0).all())
    if case.get("weight") in (0.0, math.inf):
        _assert_hard_order(kw, out)
    assert_same(out, dm.priority_mask(**kw), "dispatcher")


def _assert_hard_order(kw, out):
    """w = inf masks every maskable priority token of a segment before any other (w = 0: the
    reverse), in both samplings; returns how many segments mask tokens of both groups."""
    T = kw["input_ids"].numel()
    mk = _maskable(kw)
    pr = kw["priority"].bool() & mk
    first, second = (pr, mk & ~pr) if math.isinf(kw["weight"]) else (mk & ~pr, pr)
    q_first, q_second = (out.rates[:, 1], out.rates[:, 0]) if math.isinf(kw["weight"]) else (out.rates[:, 0], out.rates[:, 1])
    seg, S = _segments(kw)
    m0 = views(out, T, 2)[0]
    both = 0
    for s in range(S):
        at = seg == s
        if bool(first[at].any()) and bool(second[at].any()):
            # the rates: the second group draws only once the first is certain
            assert float(q_second[s]) == 0.0 or float(q_first[s]) == 1.0, (s, out.rates[s])
        if bool((m0 & second & at).any()):
            assert bool(m0[first & at].all()), f"segment {s}: a token of the second group is masked before the first"
            both += bool((m0 & first & at).any())
    return both


@pytest.mark.parametrize("weight", [0.0, math.inf])
@pytest.mark.parametrize("sampling", ["bernoulli", "exact"])
def test_hard_weights_mask_one_group_first(weight, sampling):
    # σ from 0.05 to 0.95 over 12 sequences of 40 tokens, 40 % priority: both regimes (σ·N below
    # and above the first group's size) occur, so the order is checked where it matters
    kw = packed_case([40] * 12, 5, prio_rate=0.4, prompt=False, weight=weight, sampling=sampling,
                     complementary=True, sigma=torch.linspace(0.05, 0.95, 12))
    out = ref(**kw)
    assert _assert_hard_order(kw, out) >= 3
    assert_same(out, dm.priority_mask(**kw), "dispatcher")


def test_sigma_scalar_broadcasts_after_float32_rounding():
    kw = packed_case([10, 20], 1, sigma=0.3)
    out = ref(**kw)
    assert out.sigma.dtype == torch.float32 and out.sigma.tolist() == [float(torch.tensor(0.3))] * 2
    kw2 = dict(kw, sigma=torch.tensor([0.3, 0.3], dtype=torch.float64))
    assert_same(out, ref(**kw2), "float, 1-element and per-segment sigma")


def test_priority_of_other_integer_widths():
    kw = packed_case([50], 1, weight=2.0)
    p = kw["priority"]
    a = ref(**kw)
    for dt in (torch.uint8, torch.int32, torch.int64):
        x = p.to(dt) * (256 if dt != torch.uint8 else 1)  # 256 must still count as "priority"
        assert_same(a, ref(**{**kw, "priority": x}), str(dt))


# --------------------------------------------------------------------------------------------
# Inputs that must be refused (docs/design.md §9)
# --------------------------------------------------------------------------------------------
def _base():
    return dict(input_ids=torch.arange(10), sigma=0.5, cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int32),
                mask_token_id=0)


BAD = [
    (dict(input_ids=torch.arange(10).float()), TypeError, "input_ids"),
    (dict(input_ids=torch.arange(10).to(torch.int16)), TypeError, "input_ids"),
    (dict(input_ids=torch.arange(8).view(2, 2, 2)), ValueError, "input_ids"),
    (dict(input_ids=[1, 2, 3]), TypeError, "input_ids"),
    (dict(cu_seqlens=torch.tensor([[0, 4, 10]], dtype=torch.int32)), ValueError, "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([1, 4, 10], dtype=torch.int32)), ValueError, "cu_seqlens.*start"),
    (dict(cu_seqlens=torch.tensor([0, 6, 4, 10], dtype=torch.int32)), ValueError, "cu_seqlens.*non-decreasing"),
    (dict(cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32)), ValueError, "cu_seqlens.*end"),
    (dict(cu_seqlens=torch.tensor([0, 4, 10.0])), TypeError, "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([], dtype=torch.int32)), ValueError, "cu_seqlens"),
    (dict(input_ids=torch.arange(10).view(2, 5)), ValueError, "cu_seqlens"),
    (dict(sigma=1.5), ValueError, "sigma"),
    (dict(sigma=-0.1), ValueError, "sigma"),
    (dict(sigma=float("nan")), ValueError, "sigma"),
    (dict(sigma=torch.tensor([0.5, float("nan")])), ValueError, "sigma"),
    (dict(sigma=torch.tensor([0.5, 1.01])), ValueError, "sigma"),
    (dict(sigma=torch.tensor([0.5, 0.5, 0.5])), ValueError, "sigma"),
    (dict(sigma=torch.tensor([1, 0])), TypeError, "sigma"),
    (dict(sigma="0.5"), TypeError, "sigma"),
    (dict(sigma=torch.tensor([0.5, 0.5]), block_size=4), ValueError, "sigma"),
    (dict(weight=-1.0), ValueError, "weight"),
    (dict(weight=float("nan")), ValueError, "weight"),
    (dict(weight="2"), TypeError, "weight"),
    (dict(block_size=0), ValueError, "block_size"),
    (dict(block_size=2.0), TypeError, "block_size"),
    (dict(prompt_lens=torch.tensor([-1, 0])), ValueError, "prompt_lens"),
    (dict(prompt_lens=torch.tensor([5, 0])), ValueError, "prompt_lens"),
    (dict(prompt_lens=torch.tensor([1, 0, 0])), ValueError, "prompt_lens"),
    (dict(prompt_lens=torch.tensor([1.0, 0.0])), TypeError, "prompt_lens"),
    (dict(prompt_lens=torch.tensor([1, 0]), maskable=torch.ones(10, dtype=torch.bool)), ValueError, "maskable"),
    (dict(maskable=torch.ones(9, dtype=torch.bool)), ValueError, "maskable"),
    (dict(maskable=torch.ones(10)), TypeError, "maskable"),
    (dict(priority=torch.ones(11, dtype=torch.bool)), ValueError, "priority"),
    (dict(priority=torch.ones(10, dtype=torch.float64)), TypeError, "priority"),  # float32 = importance weights
    (dict(sample_ids=torch.tensor([1])), ValueError, "sample_ids"),
    (dict(mask_token_id=2**31, input_ids=torch.arange(10, dtype=torch.int32)), ValueError, "mask_token_id"),
    (dict(mask_token_id=-(2**63) - 1), ValueError, "mask_token_id"),
    (dict(mask_token_id=1.0), TypeError, "mask_token_id"),
    (dict(sampling="topk"), ValueError, "sampling"),
    (dict(loss_weight="elbo"), ValueError, "loss_weight"),
    (dict(complementary=1), TypeError, "complementary"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=torch.tensor([1, 2])), ValueError, "seed"),
    (dict(seq_offset=torch.tensor(1.0)), TypeError, "seq_offset"),
    (dict(backend="cuda"), ValueError, "backend"),
]


@pytest.mark.parametrize("bad,exc,match", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_refuses_bad_input(bad, exc, match):
    kw = {**_base(), **bad}
    with pytest.raises(exc, match=match):
        dm.priority_mask(**kw)


def test_refuses_mixed_devices():
    if not torch.cuda.is_available():
        meta = torch.empty(10, dtype=torch.bool, device="meta")
        with pytest.raises(ValueError, match="priority.*device|priority.*meta"):
            dm.priority_mask(**_base(), priority=meta)
        with pytest.raises(ValueError, match="seed"):
            dm.priority_mask(**_base(), seed=torch.tensor(1, device="meta"))
    else:
        with pytest.raises(ValueError, match="priority"):
            dm.priority_mask(**_base(), priority=torch.ones(10, dtype=torch.bool, device="cuda"))


def test_env_backend_is_named(monkeypatch):
    monkeypatch.setenv("DLLM_MASKS_BACKEND", "fast")
    with pytest.raises(ValueError, match="DLLM_MASKS_BACKEND"):
        dm.priority_mask(**_base())
    monkeypatch.setenv("DLLM_MASKS_BACKEND", "ref")
    assert_same(dm.priority_mask(**_base()), ref(**_base()), "env ref")


def test_num_segments():
    cu = torch.tensor([0, 0, 3, 35, 100], dtype=torch.int32)
    assert dm.num_segments(cu) == 4
    assert dm.num_segments(cu, 32) == 0 + 1 + 1 + 3
    assert dm.num_segments([0, 5], 1) == 5
    with pytest.raises(ValueError, match="block_size"):
        dm.num_segments(cu, 0)


# --------------------------------------------------------------------------------------------
# The op boundary: torch.library and torch.compile
# --------------------------------------------------------------------------------------------
def _op_args(lengths=(5, 0, 33), complementary=True, lw=2, block=0):
    kw = packed_case(list(lengths), 2, block_size=block or None)
    cu = kw["cu_seqlens"]
    S = dm.num_segments(cu, block or None)
    return (kw["input_ids"], cu, kw["sigma"], kw["priority"], None, kw["prompt_lens"], None,
            torch.tensor([11, 0]), 2.0, block, S, False, complementary, lw, 3)


@pytest.mark.parametrize("args", [_op_args(), _op_args(complementary=False, lw=0), _op_args(block=4, lw=1)])
def test_opcheck(args):
    torch.library.opcheck(torch.ops.dllm_masks.priority_mask.default, args)


def test_torch_compile_fullgraph_two_shapes():
    torch._dynamo.reset()
    dm.ops._announce.cache_clear()  # the first call of a backend logs: that must not break the graph

    def step(ids, cu, prio, sigma, seed):
        out = dm.priority_mask(ids, sigma, cu_seqlens=cu, priority=prio, weight=2.0, complementary=True,
                               mask_token_id=3, seed=seed, loss_weight="sigma", validate=False)
        return out.noisy_ids, out.loss_weight, out.rates

    compiled = torch.compile(step, fullgraph=True)
    for lengths in ([5, 0, 33], [64, 64, 7, 1]):
        kw = packed_case(lengths, 4)
        args = (kw["input_ids"], kw["cu_seqlens"], kw["priority"], kw["sigma"], torch.tensor(5))
        for a, b in zip(compiled(*args), step(*args)):
            assert torch.equal(a, b)
