"""attention_mask_4d / position_ids_4d / block_mask_4d: padded rows [view 0 | ... | x_0] give the
same attention rule as the packed training layout (brute force against dense_mask)."""
import pytest
import torch
import torch.nn.functional as F

from dllm_masks import blockdiff as bd


def _packed_index(lens, views, L):
    """For each row b: packed-layout index of (copy c, position p) for real positions, in the
    row order [view 0 | ... | x_0]; and the row positions they come from."""
    T = int(sum(lens))
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    out = []
    for b, n in enumerate(lens):
        packed, row = [], []
        for c in range(views + 1):
            for p in range(n):
                packed.append(c * T + cu[b] + p)
                row.append(c * L + p)
        out.append((torch.tensor(packed, dtype=torch.long), torch.tensor(row, dtype=torch.long)))
    return out, torch.tensor(cu, dtype=torch.int32)


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("K", [1, 3, 4, 32])
def test_rows_equal_packed_layout(views, K):
    L = 11
    lens = [11, 5, 1, 8]
    kpm = torch.tensor([[1] * n + [0] * (L - n) for n in lens])
    m4 = bd.attention_mask_4d(4, L, K, views=views, key_padding_mask=kpm)
    assert m4.shape == (4, 1, (views + 1) * L, (views + 1) * L) and m4.dtype == torch.bool
    maps, cu = _packed_index(lens, views, L)
    dense = bd.dense_mask(bd.training_layout(cu, K, views=views))
    lay = bd.training_layout(cu, K, views=views)
    pos = bd.position_ids_4d(4, L, views=views)
    for b, (packed, row) in enumerate(maps):
        assert torch.equal(m4[b, 0][row][:, row], dense[packed][:, packed])
        assert torch.equal(pos[b, row], lay.position[packed])
        real = torch.zeros((views + 1) * L, dtype=torch.bool)
        real[row] = True
        # padding keys are never attended; a padding query attends itself only
        assert not m4[b, 0][:, ~real][real].any()
        pad_rows = m4[b, 0][~real]
        assert torch.equal(pad_rows, torch.eye((views + 1) * L, dtype=torch.bool)[~real])


def test_float_mask_is_additive():
    kpm = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    mb = bd.attention_mask_4d(2, 4, 2, views=2, key_padding_mask=kpm)
    mf = bd.attention_mask_4d(2, 4, 2, views=2, key_padding_mask=kpm, dtype=torch.bfloat16)
    assert mf.dtype == torch.bfloat16
    assert torch.equal(mf == 0, mb) and bool(torch.isneginf(mf[~mb]).all())
    q = torch.randn(2, 2, 12, 8)
    a = F.scaled_dot_product_attention(q, q, q, attn_mask=mb)
    b = F.scaled_dot_product_attention(q, q, q, attn_mask=mf.float())
    assert torch.allclose(a, b, atol=1e-6) and not torch.isnan(a).any()


def test_without_padding_and_refusals():
    m = bd.attention_mask_4d(3, 8, 4, views=2)
    lay = bd.training_layout(torch.tensor([0, 8], dtype=torch.int32), 4, views=2)
    assert torch.equal(m[1, 0], bd.dense_mask(lay))
    with pytest.raises(ValueError, match="^key_padding_mask"):
        bd.attention_mask_4d(2, 4, 2, key_padding_mask=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="^dtype"):
        bd.attention_mask_4d(2, 4, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="^block_size"):
        bd.attention_mask_4d(2, 4, 0)


@pytest.mark.skipif(not bd.flex_available(), reason="FlexAttention is not in this torch")
def test_block_mask_matches_the_dense_rows():
    from torch.nn.attention.flex_attention import flex_attention

    L, K, views = 10, 4, 2
    kpm = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])
    bm = bd.block_mask_4d(2, L, K, views=views, key_padding_mask=kpm, BLOCK_SIZE=16)
    m4 = bd.attention_mask_4d(2, L, K, views=views, key_padding_mask=kpm)
    q, k, v = (torch.randn(2, 2, 3 * L, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    a = flex_attention(q, k, v, block_mask=bm)
    b = F.scaled_dot_product_attention(q, k, v, attn_mask=m4)
    assert torch.allclose(a, b, atol=1e-5)
