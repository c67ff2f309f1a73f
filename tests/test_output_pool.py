"""dm.OutputPool and Masker(reuse_outputs=True): reused buffers give the same results as fresh
outputs, for shapes that change from call to call, and stop allocating once grown."""
import pytest
import torch

import dllm_masks as dm
from dllm_masks.testing import assert_same

MASK = 7


def _packed(lens, seed):
    g = torch.Generator().manual_seed(seed)
    T = sum(lens)
    ids = torch.randint(10, 1000, (T,), generator=g)
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), dtype=torch.int32)
    prio = torch.rand(T, generator=g) < 0.3
    return ids, cu, prio


BACKENDS = [None, "ref"] + (["cpp"] if "cpp" in dm.available_backends() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_size", [None, 4])
@pytest.mark.parametrize("loss_weight", [None, "sigma", "token"])
def test_pool_matches_fresh_outputs_across_changing_shapes(backend, block_size, loss_weight):
    pool = dm.OutputPool()
    for step, lens in enumerate([[5, 0, 33], [31], [1, 3, 5, 31, 33, 64], [2, 2], [40, 40, 40]]):
        ids, cu, prio = _packed(lens, step)
        kw = dict(mask_token_id=MASK, cu_seqlens=cu, priority=prio, weight=2.0, complementary=True,
                  block_size=block_size, seed=step, loss_weight=loss_weight, backend=backend)
        fresh = dm.priority_mask(ids, 0.4, **kw)
        got = dm.priority_mask(ids, 0.4, out=pool.take(ids, cu_seqlens=cu, block_size=block_size,
                                                       complementary=True, loss_weight=loss_weight), **kw)
        assert_same(got, fresh)


def test_pool_stops_allocating_and_hands_out_the_same_memory():
    pool = dm.OutputPool(growth=1.5)
    ids, cu, _ = _packed([100, 50], 0)
    a = pool.take(ids, cu_seqlens=cu, complementary=True, loss_weight="sigma")
    n = pool.allocations
    assert n == 7  # one buffer per field
    small, cu2, _ = _packed([60, 30], 1)
    b = pool.take(small, cu_seqlens=cu2, complementary=True, loss_weight="sigma")
    assert pool.allocations == n and b.noisy_ids.data_ptr() == a.noisy_ids.data_ptr()
    big, cu3, _ = _packed([120, 50], 2)  # 170 > 150: grows to 1.5 × 340 per-token slots
    c = pool.take(big, cu_seqlens=cu3, complementary=True, loss_weight="sigma")
    assert c.noisy_ids.shape == (340,) and c.noisy_ids.is_contiguous()
    grown = pool.allocations
    assert grown > n
    again, cu4, _ = _packed([200, 50], 3)  # 500 ≤ 1.5 × 340 = 510: no new buffer
    pool.take(again, cu_seqlens=cu4, complementary=True, loss_weight="sigma")
    assert pool.allocations == grown
    assert pool.nbytes() > 0 and "OutputPool" in repr(pool)


def test_pool_padded_layout_and_dtype_keys():
    pool = dm.OutputPool()
    for L, dtype in [(17, torch.int64), (9, torch.int32), (33, torch.int32)]:
        ids = torch.randint(10, 100, (3, L), dtype=dtype)
        out = pool.take(ids, complementary=True)
        assert out.noisy_ids.shape == (6, L) and out.noisy_ids.dtype == dtype and out.loss_weight is None
        res = dm.priority_mask(ids, 0.5, mask_token_id=MASK, complementary=True, loss_weight=None, seed=1, out=out)
        assert_same(res, dm.priority_mask(ids, 0.5, mask_token_id=MASK, complementary=True, loss_weight=None, seed=1))


@pytest.mark.parametrize("growth,exc", [(0.5, ValueError), (float("nan"), ValueError), (True, TypeError),
                                        ("2", TypeError)])
def test_pool_rejects_bad_growth(growth, exc):
    with pytest.raises(exc, match="^growth"):
        dm.OutputPool(growth=growth)


@pytest.mark.parametrize("sigma", [(0.3, 0.8), dm.Schedule("cosine")])
@pytest.mark.parametrize("block_size", [None, 8])
def test_masker_reuse_outputs_is_the_same_stream(sigma, block_size):
    kw = dict(weight=2.0, complementary=True, block_size=block_size, sigma=sigma, seed=3)
    lw = sigma if isinstance(sigma, dm.Schedule) else "sigma"
    fresh = dm.Masker(MASK, loss_weight=lw, **kw)
    reused = dm.Masker(MASK, loss_weight=lw, reuse_outputs=True, **kw)
    ptrs = set()
    for step, lens in enumerate([[40, 9], [3, 70, 1], [40, 9], [12]]):
        ids, cu, prio = _packed(lens, step)
        a = fresh(ids, cu_seqlens=cu, priority=prio, prompt_lens=torch.ones(len(lens), dtype=torch.int64))
        b = reused(ids, cu_seqlens=cu, priority=prio, prompt_lens=torch.ones(len(lens), dtype=torch.int64))
        assert_same(b, a)
        assert torch.equal(b.maskable, a.maskable)
        ptrs.add(b.noisy_ids.data_ptr())
    assert len(ptrs) <= 2  # one buffer, regrown at most once (3 + 70 + 1 > 49 · 1.25)
    assert reused.pool.allocations <= 14


def test_masker_reuse_outputs_type_checked():
    with pytest.raises(TypeError, match="^reuse_outputs"):
        dm.Masker(MASK, reuse_outputs=1)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("complementary", [False, True])
def test_masker_prompt_lens_equals_the_maskable_it_stands_for(padded, complementary):
    """With the complement, prompt lengths go to the op directly and ``maskable`` is read back
    from the two views; it must equal the mask the prompt lengths stand for."""
    lens = [5, 0, 33, 1, 31]
    ids, cu, prio = _packed(lens, 4)
    pl = torch.tensor([2, 0, 33, 1, 0])  # sequence 2 is all prompt
    if padded:
        L = max(lens)
        ids = torch.arange(len(lens) * L).reshape(len(lens), L) % 50 + 10
        prio = (ids % 3) == 0
        m = torch.arange(L)[None, :] >= pl[:, None]
        kw = {}
    else:
        seq = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
        m = (torch.arange(ids.numel()) - cu[:-1].long()[seq]) >= pl[seq]
        kw = {"cu_seqlens": cu}
    mk = lambda: dm.Masker(MASK, weight=2.0, complementary=complementary, block_size=4, sigma=(0.2, 0.9), seed=5)
    a = mk()(ids, prompt_lens=pl, priority=prio, **kw)
    b = mk()(ids, maskable=m, priority=prio, **kw)
    assert_same(a, b)
    assert torch.equal(a.maskable, m.repeat((2 if complementary else 1,) + (1,) * (m.dim() - 1)))
    with pytest.raises(ValueError, match="^prompt_lens: prompt_lens\\[2\\] = 40 is longer"):
        mk()(ids, prompt_lens=torch.tensor([2, 0, 40, 1, 0]), priority=prio, **kw)


@pytest.mark.parametrize("mask_kw", [dict(), dict(sigma_per_block=False, loss_weight=None),
                                     dict(complementary=False, sampling="exact", block_size=4),
                                     dict(priority="none", loss_weight="token")])
def test_mask_batch_with_a_pool_is_the_same_batch(mask_kw):
    """The loop's step masking (one pool per micro-batch slot) gives the batches it gave without."""
    from dllm_masks.data.collate import MaskConfig, mask_batch
    from dllm_masks.data.pack import PackedBatch

    cfg = MaskConfig(**mask_kw)
    pool = dm.OutputPool()
    ptrs = []
    for step, lens in enumerate([[40, 9, 33], [5, 1], [70, 31, 0, 2], [40, 9, 33]]):
        ids, cu, prio = _packed(lens, step)
        B = len(lens)
        pb = PackedBatch(input_ids=ids, cu_seqlens=cu, prompt_lens=torch.tensor([min(3, n) for n in lens]),
                         priority=prio, sample_ids=torch.arange(B) + 10 * step, indices=torch.arange(B))
        a = mask_batch(pb, cfg, mask_token_id=MASK, seed=step)
        b = mask_batch(pb, cfg, mask_token_id=MASK, seed=step, pool=pool)
        for name, x in vars(a).items():
            y = getattr(b, name)
            assert (torch.equal(x, y) and x.dtype == y.dtype) if isinstance(x, torch.Tensor) else x == y, name
        ptrs.append(b.input_ids.data_ptr())
    assert ptrs[0] == ptrs[1] and ptrs[3] in ptrs[2:]  # the same memory, regrown at most once
    assert ("noisy_ids", torch.int64, torch.device("cpu")) not in pool._bufs  # the op writes into the model input


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_mask_config_sigma_per_block_is_type_checked(value):
    from dllm_masks.data.collate import MaskConfig

    with pytest.raises(TypeError, match="^mask.sigma_per_block"):
        MaskConfig(sigma_per_block=value)
