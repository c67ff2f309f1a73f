"""dm.mask_stats against a brute-force loop over tokens."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dllm_masks as dm
from dllm_masks.stats import format_stats
from dllm_masks.testing import packed_case


def brute(masked, cu, mk, dense, sigma, block, view):
    """The statistics of one view, by explicit loops."""
    runs, full, fb_den, inner, both, spans, whole = [], 0, 0, 0, 0, 0, 0
    seg_rates = []
    for b in range(len(cu) - 1):
        a, e = cu[b], cu[b + 1]
        run = 0
        for t in range(a, e + 1):
            if t < e and masked[t]:
                run += 1
            elif run:
                runs.append(run)
                run = 0
        for t in range(a, e):
            if dense[t] and masked[t] and a < t < e - 1:
                inner += 1
                both += masked[t - 1] and masked[t + 1]
        t = a
        while t < e:
            if dense[t]:
                u = t
                while u < e and dense[u]:
                    u += 1
                spans += 1
                whole += all(masked[t:u])
                t = u
            else:
                t += 1
        step = block or max(e - a, 1)
        starts = range(a, e, step) if block else [a]
        for s0 in starts:
            s1 = min(e, s0 + step) if block else e
            n = sum(mk[s0:s1])
            k = sum(masked[t] for t in range(s0, s1))
            seg_rates.append(k / n if n else math.nan)
            if block and n:
                fb_den += 1
                full += k == n
    hist = [0] * (max(runs) + 1 if runs else 1)
    for r in runs:
        hist[r] += 1
    return hist, (sum(runs) / len(runs) if runs else math.nan), (full / fb_den if fb_den else math.nan) if block else None, \
        (both / inner if inner else math.nan), (whole / spans if spans else math.nan), seg_rates


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=5), seed=st.integers(0, 1000),
       block=st.sampled_from([None, 1, 4, 7]), comp=st.booleans(), weight=st.sampled_from([1.0, 2.0, 5.0, math.inf]),
       sampling=st.sampled_from(["bernoulli", "exact"]), prio_rate=st.sampled_from([0.0, 0.3, 0.8]))
def test_matches_brute_force(lengths, seed, block, comp, weight, sampling, prio_rate):
    kw = packed_case(lengths, seed=seed, block_size=block, complementary=comp, weight=weight, sampling=sampling,
                     prio_rate=prio_rate)
    out = dm.priority_mask(**kw)
    T = sum(lengths)
    stats = dm.mask_stats(out, block_size=block, priority=kw["priority"])
    assert len(stats) == (2 if comp else 1)
    cu = kw["cu_seqlens"].tolist()
    seq = torch.searchsorted(kw["cu_seqlens"][1:].long(), torch.arange(T), right=True)
    pos = torch.arange(T) - kw["cu_seqlens"].long()[seq]
    mk = (pos >= kw["prompt_lens"][seq]) if "prompt_lens" in kw else torch.ones(T, dtype=torch.bool)
    if not comp:  # a single view does not reveal the prompt: pass it
        stats = dm.mask_stats(out, block_size=block, priority=kw["priority"], maskable=mk)
    dense = (kw["priority"] & mk).tolist()
    for v, s in enumerate(stats):
        m = out.masked[v * T:(v + 1) * T].tolist()
        hist, mean, full, both, whole, rates = brute(m, cu, mk.tolist(), dense, out.sigma, block, v)
        assert s.run_hist.tolist() == hist
        assert same(s.run_mean, mean)
        assert (s.full_blocks is None) == (full is None) and (full is None or same(s.full_blocks, full))
        assert same(s.dense_both_neighbours, both) and same(s.dense_spans_whole, whole)
        assert len(rates) == s.segment_rate.numel()
        assert all(same(a, b) for a, b in zip(s.segment_rate.tolist(), rates))
        tgt = out.sigma.double() if v == 0 else 1 - out.sigma.double()
        assert torch.equal(s.segment_target, tgt)
        for lv, r in s.level_rate.items():
            sel = [i for i in range(T) if mk[i] and bool(kw["priority"][i]) == bool(lv)]
            assert same(r, sum(m[i] for i in sel) / len(sel))
    assert isinstance(format_stats(stats), str)


def test_hard_masking_collapses_dense_spans():
    # The paper's point: with w = inf, dense spans are masked whole far more often than with w = 1.
    g = torch.Generator().manual_seed(0)
    T, B = 4000, 20
    ids = torch.randint(5, 100, (T,), generator=g)
    cu = torch.arange(B + 1, dtype=torch.int32) * (T // B)
    prio = (torch.arange(T) // 6) % 4 == 0  # spans of 6 dense tokens
    whole = {}
    for w in (1.0, math.inf):
        out = dm.priority_mask(ids, 0.3, cu_seqlens=cu, priority=prio, weight=w, mask_token_id=0, seed=1,
                               complementary=True)
        whole[w] = dm.mask_stats(out, priority=prio)[0].dense_spans_whole
    assert whole[math.inf] > 0.9 and whole[1.0] < 0.05


def test_padded_and_float_priority():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (3, 16), generator=g)
    w = torch.rand(3, 16, generator=g) * 3
    out = dm.priority_mask(ids, 0.5, priority=w, mask_token_id=0, complementary=True)
    s = dm.mask_stats(out, priority=w)
    assert len(s) == 2 and s[0].segment_rate.numel() == 3
    assert len(s[0].level_rate) == 8  # 48 distinct weights: 8 bins
    with pytest.raises(ValueError, match="^block_size"):
        dm.mask_stats(out, block_size=5)


def test_show_mask_prints_stats(capsys):
    from dllm_masks.cli import main

    assert main(["show-mask", "--stats", "--weight", "5"]) == 0
    out = capsys.readouterr().out
    assert "mask statistics" in out and "dense spans masked whole" in out and "mean run" in out
