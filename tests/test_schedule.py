"""sample_sigma: bounds, stratification, reproducibility, refusals."""
import pytest
import torch

import dllm_masks as dm


def test_bounds_dtype_and_reproducibility():
    g = torch.Generator().manual_seed(0)
    s = dm.sample_sigma(1000, 0.3, 0.8, generator=g)
    assert s.dtype == torch.float32 and s.shape == (1000,)
    assert float(s.min()) >= 0.3 and float(s.max()) <= 0.8
    assert abs(float(s.mean()) - 0.55) < 0.02
    assert torch.equal(s, dm.sample_sigma(1000, 0.3, 0.8, generator=torch.Generator().manual_seed(0)))
    assert dm.sample_sigma(0).shape == (0,)


def test_antithetic_is_stratified():
    S = 64
    s = dm.sample_sigma(S, 0.2, 0.6, antithetic=True, generator=torch.Generator().manual_seed(1)).double()
    strata = torch.floor((s - 0.2) / 0.4 * S).clamp(max=S - 1).long()
    assert sorted(strata.tolist()) == list(range(S))  # one draw in each stratum
    assert strata.tolist() != list(range(S))  # in a random order, not by segment index


@pytest.mark.parametrize("args,exc,match", [
    ((4, 0.5, 0.4), ValueError, "low"),
    ((4, -0.1, 0.4), ValueError, "low"),
    ((4, 0.1, 1.4), ValueError, "high"),
    ((-1,), ValueError, "num_segments"),
    ((2.5,), TypeError, "num_segments"),
    ((4, "0", 1.0), TypeError, "low"),
])
def test_refuses(args, exc, match):
    with pytest.raises(exc, match=match):
        dm.sample_sigma(*args)
