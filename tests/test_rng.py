"""Philox4x32-10 and the counter layout of docs/design.md §4."""
import json

import pytest
import torch
from hypothesis import given, strategies as st

from dllm_masks.reference import _draws, _token_layout
from dllm_masks.rng import philox4x32, sequence_draws, split_seed
from dllm_masks.testing import PHILOX_KNOWN_ANSWERS as KNOWN_ANSWERS, VECTORS



@pytest.mark.parametrize("ctr,key,expected", KNOWN_ANSWERS)
def test_known_answers(ctr, key, expected):
    words = philox4x32(*[torch.tensor([c], dtype=torch.int64) for c in ctr], *key)
    assert tuple(int(w) for w in words) == expected


def test_golden_draws():
    draws = json.loads(VECTORS.read_text())["draws"]
    pos = torch.arange(10)
    for stream in (0, 1):
        got = sequence_draws(torch.full((10,), 5), pos, stream, 42).tolist()
        assert got == draws[f"seed=42 seq_key=5 stream={stream}"]


def test_split_seed_uint64():
    assert split_seed(-1) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert split_seed(2**64 + 7) == (7, 0)
    assert split_seed(0x123456789ABCDEF0) == (0x9ABCDEF0, 0x12345678)
    k0, k1 = split_seed(torch.tensor(-2, dtype=torch.int64))  # the bits of 2^64 - 2
    assert (int(k0), int(k1)) == (0xFFFFFFFE, 0xFFFFFFFF)


@given(lengths=st.lists(st.integers(0, 23), max_size=6), seed=st.integers(0, 2**64 - 1),
       keys=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=6, max_size=6), stream=st.sampled_from([0, 1]))
def test_grouped_draws_equal_per_token_definition(lengths, seed, keys, stream):
    """The reference draws once per group of four tokens; that must equal the per-token definition."""
    cu = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(torch.int32)
    T = int(cu[-1])
    cu64, seq, pos = _token_layout(cu, T)
    seq_keys = torch.tensor(keys[: len(lengths)], dtype=torch.int64)
    signed_seed = seed - 2**64 if seed >= 2**63 else seed
    got = _draws(cu64, seq, pos, seq_keys, stream, torch.tensor([signed_seed, 0]))
    want = sequence_draws(seq_keys[seq], pos, stream, seed)
    assert torch.equal(got, want)
    assert bool((got >= 0).all()) and bool((got < 2**32).all())
