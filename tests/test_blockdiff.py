"""Block-diffusion attention masks against a brute-force loop over (i, j)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

from dllm_masks import blockdiff as bd

torch.set_num_threads(2)


def brute_force(lengths, block_size, views):
    """The rule of docs/training.md (attention), written as a plain loop over every (query, key) pair."""
    T = sum(lengths)
    toks = []  # (doc, copy or None for clean, position)
    for v in list(range(views)) + [None]:
        for d, L in enumerate(lengths):
            for p in range(L):
                toks.append((d, v, p))
    N = len(toks)
    m = torch.zeros(N, N, dtype=torch.bool)
    for i, (di, vi, pi) in enumerate(toks):
        for j, (dj, vj, pj) in enumerate(toks):
            if di != dj:
                continue
            bi, bj = pi // block_size, pj // block_size
            if vi is not None and vj is not None:
                ok = vi == vj and bi == bj
            elif vi is not None:
                ok = bi > bj
            elif vj is None:
                ok = bi >= bj
            else:
                ok = False  # clean never sees noisy
            m[i, j] = ok
    assert N == (views + 1) * T
    return m


def cu_of(lengths):
    return torch.tensor([0] + list(torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()) if lengths else [0],
                        dtype=torch.int32)


CASES = [
    ([7], 4, 1),                 # one document, partial last block
    ([5, 0, 9, 3], 4, 1),        # several documents, an empty one, odd lengths
    ([5, 0, 9, 3], 4, 2),        # two noisy views (complementary) sharing one clean copy
    ([1, 33, 31], 32, 2),        # around the paper's block size
    ([6, 6], 1, 1),              # block size 1: block-causal = causal
    ([4, 2], 100, 2),            # block larger than every document
]


@pytest.mark.parametrize("lengths,block_size,views", CASES)
def test_dense_mask_equals_brute_force(lengths, block_size, views):
    lay = bd.training_layout(cu_of(lengths), block_size, views=views)
    assert torch.equal(bd.dense_mask(lay), brute_force(lengths, block_size, views))


@given(st.lists(st.integers(0, 13), min_size=1, max_size=4), st.integers(1, 6), st.integers(1, 2))
def test_dense_mask_property(lengths, block_size, views):
    lay = bd.training_layout(cu_of(lengths), block_size, views=views)
    assert torch.equal(bd.dense_mask(lay), brute_force(lengths, block_size, views))


def _gathered_mask(att):
    """The packed [N, N] mask that the per-document gathered SDPA realises."""
    n = att.layout.n
    full = torch.zeros(n, n, dtype=torch.bool)
    for r in range(att.index.shape[0]):
        idx = att.index[r]
        ok = idx < n
        sub = att.mask[r, 0][ok][:, ok]
        full[idx[ok][:, None], idx[ok][None, :]] = sub
    return full


@pytest.mark.parametrize("lengths,block_size,views", CASES)
def test_sdpa_docs_mask_and_output(lengths, block_size, views):
    lay = bd.training_layout(cu_of(lengths), block_size, views=views)
    docs = bd.BlockDiffAttention(lay, "sdpa_docs")
    dense = bd.BlockDiffAttention(lay, "sdpa")
    assert torch.equal(_gathered_mask(docs), brute_force(lengths, block_size, views))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(lay.n, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(docs(q, k, v), dense(q, k, v), rtol=1e-10, atol=1e-12)
    # and against attention written out by hand
    m = brute_force(lengths, block_size, views)
    s = torch.einsum("ihd,jhd->hij", q, k) / 8 ** 0.5
    ref = torch.einsum("hij,jhd->ihd", s.masked_fill(~m, float("-inf")).softmax(-1), v)
    torch.testing.assert_close(dense(q, k, v), ref, rtol=1e-10, atol=1e-12)


def _hand_attention(q, k, v, m):
    s = torch.einsum("ihd,jhd->hij", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("hij,jhd->ihd", s.masked_fill(~m, float("-inf")).softmax(-1), v)


LAYOUTS = [
    ("training, several documents", lambda: bd.training_layout(cu_of([5, 0, 9, 3]), 4, views=2)),
    ("training, multiples of the block", lambda: bd.training_layout(cu_of([8, 16, 4]), 4, views=2)),
    ("training, one view", lambda: bd.training_layout(cu_of([13, 1, 7]), 4, views=1)),
    ("decode, prefixes mid-block and empty", lambda: bd.decode_layout([8, 5, 0, 3], [12, 8, 4, 4], 4)),
]


@pytest.mark.parametrize("name,make", LAYOUTS, ids=[n for n, _ in LAYOUTS])
@pytest.mark.parametrize("mode", ["sdpa_docs", "sdpa_blocks"])
def test_modes_match_hand_attention_with_gradients(name, make, mode):
    lay = make()
    m = bd.dense_mask(lay)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(lay.n, 2, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.randn(lay.n, 2, 8, generator=g, dtype=torch.float64)
    out = bd.BlockDiffAttention(lay, mode)(q, k, v)
    ref = _hand_attention(q, k, v, m)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_sdpa_blocks_scores_fewer_pairs():
    """The per-block plan touches (V+1)·L(L+K)/2 scores per document, not ((V+1)·L)²."""
    lay = bd.training_layout(cu_of([64, 128]), 32, views=2)
    att = bd.BlockDiffAttention(lay, "sdpa_blocks")
    scores = sum(q.numel() * k.shape[1] for q, k, _, _ in att.plans)
    dense = sum((3 * L) ** 2 for L in (64, 128))
    assert scores == sum(3 * L * (L + 32) // 2 for L in (64, 128)) and scores < dense / 4


def test_every_token_sees_itself():
    lay = bd.training_layout(cu_of([3, 70, 5]), 32, views=2)
    assert bool(bd.dense_mask(lay).diagonal().all())


def test_decode_layout_matches_training_rule():
    # A prompt of 5 and finished blocks up to 8: the noisy block [8, 12) with block size 4.
    lay = bd.decode_layout([8, 5], [12, 8], 4)
    m = bd.dense_mask(lay)
    # doc 0: 4 noisy (pos 8..11), doc 1: 3 noisy (pos 5..7); then doc 0 clean 0..7, doc 1 clean 0..4
    n0, n1 = 4, 3
    c0 = n0 + n1
    c1 = c0 + 8
    assert bool(m[:n0, :n0].all())                         # own block
    assert bool(m[:n0, c0:c0 + 8].all())                    # clean blocks 0, 1 < block 2
    assert not bool(m[:n0, c1:].any())                       # never the other document
    # doc 1: noisy block 1 (pos 5..7) sees clean pos 0..3 (block 0) but not clean pos 4 (block 1)
    assert bool(m[n0:c0, c1:c1 + 4].all()) and not bool(m[n0:c0, c1 + 4].any())
    assert not bool(m[c0:, :c0].any())                       # clean never sees noisy


def test_flex_block_mask_matches_rule():
    if not bd.flex_available():
        pytest.skip("FlexAttention not available in this torch")
    lengths, K, views = [5, 0, 40, 19], 8, 2
    lay = bd.training_layout(cu_of(lengths), K, views=views)
    bm = bd.flex_block_mask(lay, BLOCK_SIZE=16)
    n = lay.n
    qi = torch.arange(n)[:, None].expand(n, n)
    kj = torch.arange(n)[None, :].expand(n, n)
    got = bm.mask_mod(torch.zeros(()), torch.zeros(()), qi, kj)
    assert torch.equal(got, brute_force(lengths, K, views))
    # Tiles that the block mask skips hold no allowed pair.
    dense_tiles = bm.to_dense()[0, 0].bool()
    full = brute_force(lengths, K, views)
    for a in range(dense_tiles.shape[0]):
        for b in range(dense_tiles.shape[1]):
            if not dense_tiles[a, b]:
                assert not bool(full[a * 16:(a + 1) * 16, b * 16:(b + 1) * 16].any())


def test_flex_mode_output(monkeypatch):
    """The "flex" mode's plumbing (shapes, BlockMask) on a CPU: eager FlexAttention, forward only."""
    if not bd.flex_available():
        pytest.skip("FlexAttention not available in this torch")
    import warnings

    monkeypatch.setattr(bd, "FLEX_COMPILE", False)
    lay = bd.training_layout(cu_of([5, 0, 40, 19]), 8, views=2)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(lay.n, 2, 8, generator=g) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        out = bd.BlockDiffAttention(lay, "flex")(q, k, v)
    torch.testing.assert_close(out, _hand_attention(q, k, v, bd.dense_mask(lay)), rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="block_size"):
        bd.training_layout(cu_of([3]), 0)
    with pytest.raises(ValueError, match="cu_seqlens"):
        bd.training_layout(torch.tensor([0, 5, 3], dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="views"):
        bd.training_layout(cu_of([3]), 4, views=0)
    with pytest.raises(ValueError, match="layout"):
        bd.BlockDiffAttention(bd.BlockDiffLayout(torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64),
                                                 torch.zeros(2, dtype=torch.int64), 4), "sdpa_blocks")
    with pytest.raises(ValueError, match="attention"):
        bd.BlockDiffAttention(bd.training_layout(cu_of([3]), 4), "xformers")
    with pytest.raises(ValueError, match="block_ends"):
        bd.decode_layout([4], [3], 4)
