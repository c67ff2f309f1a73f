"""Importance weights from the model itself (``mask.priority`` = none / loss / confidence / mix):
the bounded map, the per-token score store and its keying, the training loop's use of it
(schedule, checkpoints, resume, cost columns) and the direction in which it moves the masks."""
from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
import torch

from _sft import tiny_config, tokenized
from dllm_masks.data import MaskConfig, mask_batch, pack
from dllm_masks.train import checkpoint as ck
from dllm_masks.train.config import TrainConfig
from dllm_masks.train.importance import Importance, TokenScores, bounded_weights, fully_masked
from dllm_masks.train.loop import train


@pytest.fixture(scope="module")
def data():
    return tokenized(12)


def _store_of(run_dir, step=None):
    found = ck.latest_checkpoint(str(Path(run_dir) / "checkpoints")) if step is None else \
        (step, ck.checkpoint_path(str(Path(run_dir) / "checkpoints"), step))
    return ck.load_checkpoint(found[1])["importance"]["scores"]


def _final_params(run_dir):
    return ck.load_checkpoint(ck.latest_checkpoint(str(Path(run_dir) / "checkpoints"))[1])["model"]


def _rows(run_dir):
    with open(Path(run_dir) / "log.csv") as f:
        return list(csv.DictReader(f))


# ---- the bounded map ---------------------------------------------------------------------------

def _map_loop(scores, lengths, gamma, lo, hi):
    """The map, written out token by token."""
    out, k = [], 0
    for n in lengths:
        seg = scores[k:k + n]
        seen = [s for s in seg if not math.isnan(s)]
        mean = sum(seen) / len(seen) if seen else 0.0
        for s in seg:
            out.append(1.0 if math.isnan(s) or mean <= 0 else min(hi, max(lo, (s / mean) ** gamma)))
        k += n
    return out


def test_bounded_map_values_bounds_unseen_and_gamma():
    nan = float("nan")
    s = torch.tensor([1.0, 2.0, 3.0, nan, nan, nan, 0.0, 0.0, 5.0], dtype=torch.float32)
    lens = torch.tensor([4, 2, 2, 1])
    w = bounded_weights(s, lens, gamma=1.0, w_min=0.25, w_max=4.0)
    assert w.dtype == torch.float32
    # mean of the scored tokens of sample 0 is 2; unseen -> 1; an all-unseen sample and a mean of 0 -> 1
    assert w.tolist() == [0.5, 1.0, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    w2 = bounded_weights(s, lens, gamma=2.0, w_min=0.25, w_max=4.0)
    assert w2[:4].tolist() == [0.25, 1.0, 2.25, 1.0]
    clipped = bounded_weights(s, lens, gamma=2.0, w_min=0.5, w_max=2.0)
    assert clipped[:4].tolist() == [0.5, 1.0, 2.0, 1.0]
    assert bounded_weights(s, lens, gamma=0.0, w_min=0.25, w_max=4.0).tolist() == [1.0] * 9
    # a zero score in a sample with a positive mean goes to the lower bound, not to 0
    z = bounded_weights(torch.tensor([0.0, 4.0]), torch.tensor([2]), gamma=1.0, w_min=0.25, w_max=4.0)
    assert z.tolist() == [0.25, 2.0]
    with pytest.raises(ValueError, match="^lengths"):
        bounded_weights(s, torch.tensor([4, 2]), gamma=1.0, w_min=0.25, w_max=4.0)


def test_bounded_map_matches_a_token_loop_on_random_inputs():
    rng = random.Random(5)
    for _ in range(40):
        lengths = [rng.randint(0, 9) for _ in range(rng.randint(1, 6))]
        T = sum(lengths)
        scores = [float("nan") if rng.random() < 0.3 else rng.choice([0.0, rng.uniform(0, 8)]) for _ in range(T)]
        gamma, lo, hi = rng.choice([0.0, 0.5, 1.0, 2.0]), rng.choice([0.1, 0.25, 1.0]), rng.choice([1.0, 2.0, 4.0])
        w = bounded_weights(torch.tensor(scores, dtype=torch.float32), torch.tensor(lengths, dtype=torch.int64),
                            gamma=gamma, w_min=lo, w_max=hi)
        want = _map_loop([float(torch.tensor(x, dtype=torch.float32)) for x in scores], lengths, gamma, lo, hi)
        assert w.shape == (T,) and bool(torch.isfinite(w).all())
        torch.testing.assert_close(w, torch.tensor(want, dtype=torch.float32), rtol=1e-6, atol=0)
        assert bool(((w >= lo) & (w <= hi) | (w == 1.0)).all())


# ---- the store ---------------------------------------------------------------------------------

def test_store_update_is_an_ema_that_starts_at_the_first_observation():
    st = TokenScores([3, 2], decay=0.5)
    assert st.scores.numel() == 5 and bool(torch.isnan(st.scores).all())
    assert st.nbytes == 5 * 4 + 3 * 8
    st.update(torch.tensor([0, 3]), torch.tensor([2.0, 4.0], dtype=torch.float64))
    assert st.scores[0] == 2.0 and st.scores[3] == 4.0 and bool(torch.isnan(st.scores[[1, 2, 4]]).all())
    st.update(torch.tensor([0, 0, 1]), torch.tensor([4.0, 8.0, 1.0], dtype=torch.float64))
    assert st.scores[0] == 0.5 * 2.0 + 0.5 * 6.0  # two observations in one update count as their mean
    assert st.scores[1] == 1.0
    # the order of the pairs of one update does not matter (distinct positions)
    a, b = TokenScores([3, 2], 0.3), TokenScores([3, 2], 0.3)
    pos, val = torch.tensor([4, 1, 2, 0]), torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    perm = torch.tensor([2, 0, 3, 1])
    for _ in range(2):
        a.update(pos, val)
        b.update(pos[perm], val[perm])
    assert torch.equal(a.scores.nan_to_num(-1.0), b.scores.nan_to_num(-1.0))


def test_store_keys_follow_the_sample_across_epochs_packing_and_order(data):
    tok, seqs = data
    N = len(seqs)
    st = TokenScores([len(s) for s in seqs], decay=0.5)
    flat = torch.cat([s.ids for s in seqs])
    rng = random.Random(1)
    for epoch in range(3):
        order = list(range(N))
        rng.shuffle(order)
        for budget in (2048, 100):
            for pb in pack([seqs[p] for p in order], [epoch * N + p for p in order], budget):
                pos = st.positions(pb)
                # every token of the batch points at the same token of the same sample in the store
                assert torch.equal(flat[pos], pb.input_ids)
                assert len(set(pos.tolist())) == pos.numel()
    other = next(j for j in range(N) if len(seqs[j]) != len(seqs[0]))
    with pytest.raises(ValueError, match="^batch"):
        st.positions(pack([seqs[0]], [other], 2048)[0])  # sample 0's tokens under another sample's key


def test_observe_records_the_masked_tokens_ce_of_both_views(data):
    tok, seqs = data
    from dllm_masks.train.forward import masked_forward
    from dllm_masks.train.model import DiffusionLM, ModelConfig

    torch.manual_seed(0)
    model = DiffusionLM(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, max_position=256))
    cfg = MaskConfig(block_size=8, priority="loss", importance_decay=0.0)
    imp = Importance(cfg, [len(s) for s in seqs], torch.device("cpu"), tok.mask_id)
    N = len(seqs)
    pb = pack(seqs[3:9], [5 * N + p for p in range(3, 9)], 2048)[0]
    imp.begin_step(0, [pb], model, None)
    w = imp.weights(pb)
    assert torch.equal(w, torch.ones(pb.num_tokens))  # nothing scored yet
    b = mask_batch(pb, cfg, mask_token_id=tok.mask_id, seed=1, importance=w)
    logits, idx = masked_forward(model, b, block_size=8, attention="sdpa_blocks")
    imp.observe(pb, b, logits, idx)
    imp.end_step()
    ce = torch.nn.functional.cross_entropy(logits.float(), b.labels[idx], reduction="none")
    T = pb.num_tokens
    pos = imp.store.positions(pb)
    got = imp.store.scores[pos]
    # complementary views: every answer token is masked in exactly one view and scored once
    want = torch.full((T,), float("nan"))
    want[idx % T] = ce
    torch.testing.assert_close(got, want, equal_nan=True)
    answer = b.labels[:T] != -100
    answer |= b.labels[T:] != -100
    assert torch.equal(~torch.isnan(got), answer)
    c = imp.cost()
    assert c["importance_ms"] > 0 and c["importance_store_bytes"] == imp.store.nbytes
    assert c["importance_peak_bytes"] == idx.numel() * tok.vocab_size * 4


def test_confidence_scores_one_minus_p_correct_with_the_whole_answer_masked(data):
    """A stand-in forward that is sure of the tokens at even positions and uniform elsewhere: the
    scores are 1 − p(correct) (about 0 and 1 − 1/V), the sure tokens get the lower weight, and
    the pass saw every answer token masked."""
    tok, seqs = data
    V = tok.vocab_size
    seen = []

    def forward(model, b):
        from dllm_masks.train.forward import masked_index

        assert not model.training  # no-grad pass in eval mode
        seen.append(b)
        idx = masked_index(b)
        logits = torch.zeros(idx.numel(), V)
        sure = idx % 2 == 0
        logits[sure, b.labels[idx][sure]] = 50.0
        return logits, idx

    cfg = MaskConfig(block_size=8, priority="confidence", importance_every=2)
    imp = Importance(cfg, [len(s) for s in seqs], torch.device("cpu"), tok.mask_id)
    pb = pack(seqs[2:7], list(range(2, 7)), 2048)[0]
    model = torch.nn.Linear(1, 1)
    imp.begin_step(0, [pb], model, forward)
    assert model.training and len(seen) == 1
    b, T = seen[0], pb.num_tokens
    answer = b.labels != -100
    assert bool((b.input_ids[:T][answer] == tok.mask_id).all()) and b.views == 1
    scores = imp.store.scores[imp.store.positions(pb)]
    pos = torch.arange(T)
    sure, unsure = answer & (pos % 2 == 0), answer & (pos % 2 == 1)
    assert bool((scores[sure] < 1e-6).all())
    torch.testing.assert_close(scores[unsure], torch.full((int(unsure.sum()),), 1 - 1 / V))
    assert bool(torch.isnan(scores[~answer]).all())
    w = imp.weights(pb)
    assert bool((w[sure] == cfg.importance_min).all()) and bool((w[unsure] > 1).all())
    assert imp.cost()["importance_ms"] > 0 and imp.cost()["importance_peak_bytes"] == int(answer.sum()) * V * 4
    # every 2 steps: no pass at step 1, one at step 2
    imp.begin_step(1, [pb], model, forward)
    assert len(seen) == 1 and imp.cost()["importance_peak_bytes"] == 0
    imp.begin_step(2, [pb], model, forward)
    assert len(seen) == 2


def test_fully_masked_batch_masks_every_answer_token(data):
    tok, seqs = data
    pb = pack(seqs[:4], [0, 1, 2, 3], 2048)[0]
    b = fully_masked(pb, tok.mask_id)
    T = pb.num_tokens
    assert b.views == 1 and torch.equal(b.input_ids[T:], pb.input_ids)
    for j in range(pb.num_seqs):
        s, k = seqs[int(pb.sample_ids[j])], int(pb.cu_seqlens[j])
        L, P = len(s), s.prompt_len
        assert torch.equal(b.input_ids[k:k + P], s.ids[:P]) and bool((b.input_ids[k + P:k + L] == tok.mask_id).all())
        assert bool((b.labels[k:k + P] == -100).all()) and torch.equal(b.labels[k + P:k + L], s.ids[P:])


# ---- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("priority", "bogus"), ("priority", None), ("importance_gamma", -1.0), ("importance_gamma", float("nan")),
    ("importance_gamma", True), ("importance_min", 0.0), ("importance_min", 1.5), ("importance_max", 0.5),
    ("importance_max", float("inf")), ("importance_every", 0), ("importance_every", 1.5),
    ("importance_decay", 1.0), ("importance_decay", -0.1), ("importance_decay", "0.5"),
])
def test_bad_importance_config_is_refused_naming_the_key(tmp_path, key, value):
    with pytest.raises((ValueError, TypeError), match=f"^mask.{key}: "):
        TrainConfig.from_dict(tiny_config(tmp_path, **{f"mask__{key}": value}))


def test_mix_needs_a_finite_weight_and_defaults_are_documented(tmp_path):
    with pytest.raises(ValueError, match="^mask.weight: "):
        TrainConfig.from_dict(tiny_config(tmp_path, mask__priority="mix", mask__weight=float("inf")))
    m = MaskConfig()
    assert (m.priority, m.importance_gamma, m.importance_min, m.importance_max, m.importance_every,
            m.importance_decay) == ("rules", 1.0, 0.25, 4.0, 1, 0.5)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    for key in ("mask.priority", "importance_gamma", "importance_min", "importance_max", "importance_every",
                "importance_decay"):
        assert key in doc


def test_mask_batch_takes_importance_only_from_a_model_source(data):
    tok, seqs = data
    pb = pack(seqs[:3], [0, 1, 2], 2048)[0]
    w = torch.ones(pb.num_tokens)
    with pytest.raises(ValueError, match="^importance: "):
        mask_batch(pb, MaskConfig(block_size=8, priority="loss"), mask_token_id=tok.mask_id, seed=0)
    with pytest.raises(ValueError, match="^importance: "):
        mask_batch(pb, MaskConfig(block_size=8), mask_token_id=tok.mask_id, seed=0, importance=w)
    with pytest.raises(ValueError, match="^importance: "):
        mask_batch(pb, MaskConfig(block_size=8, priority="loss"), mask_token_id=tok.mask_id, seed=0, importance=w[1:])
    with pytest.raises(TypeError, match="^importance: "):
        mask_batch(pb, MaskConfig(block_size=8, priority="loss"), mask_token_id=tok.mask_id, seed=0,
                   importance=w.double())
    # "none" ignores the spans: the same masks as a batch without priority, whatever the weight
    plain = mask_batch(pb, MaskConfig(block_size=8, weight=1.0), mask_token_id=tok.mask_id, seed=4)
    pb.priority[:] = True
    none = mask_batch(pb, MaskConfig(block_size=8, weight=5.0, priority="none"), mask_token_id=tok.mask_id, seed=4)
    assert torch.equal(none.input_ids, plain.input_ids) and torch.equal(none.loss_weight, plain.loss_weight)
    # uniform weights give the uniform masks of "none"; two levels give the masks of "rules"
    pb = pack(seqs[:3], [0, 1, 2], 2048)[0]
    loss = mask_batch(pb, MaskConfig(block_size=8, priority="loss"), mask_token_id=tok.mask_id, seed=4, importance=w)
    assert torch.equal(loss.input_ids, plain.input_ids)
    two = torch.where(pb.priority, torch.tensor(2.0), torch.tensor(1.0))
    mix = mask_batch(pb, MaskConfig(block_size=8, priority="mix"), mask_token_id=tok.mask_id, seed=4, importance=two)
    rules = mask_batch(pb, MaskConfig(block_size=8), mask_token_id=tok.mask_id, seed=4)
    assert torch.equal(mix.input_ids, rules.input_ids) and torch.equal(mix.loss_weight, rules.loss_weight)


# ---- the direction of the change ---------------------------------------------------------------

def test_high_loss_tokens_are_masked_more_often_than_under_rules(data):
    """Statistical: 300 seeds, σ = 0.4 for every block. About 30% of the answer tokens get a
    running loss of 3, the rest 1 (weights ≈ 3/mean and 1/mean). Under "loss" the high-loss tokens
    must be masked in view 0 more often than under "rules" and than the low-loss tokens, each
    difference larger than 5 binomial standard errors of the two rates; the overall masked share
    must stay σ within 5 standard errors (the op conserves the expected count)."""
    tok, seqs = data
    cfg = MaskConfig(block_size=8, priority="loss", sigma_low=0.4, sigma_high=0.4, importance_gamma=1.0)
    imp = Importance(cfg, [len(s) for s in seqs], torch.device("cpu"), tok.mask_id)
    pb = pack(seqs[:6], list(range(6)), 2048)[0]
    pos = imp.store.positions(pb)
    T = pb.num_tokens
    g = torch.Generator().manual_seed(0)
    hard = torch.rand(T, generator=g) < 0.3
    cu = pb.cu_seqlens.long()
    answer = torch.zeros(T, dtype=torch.bool)
    for j in range(pb.num_seqs):
        answer[int(cu[j]) + int(pb.prompt_lens[j]):int(cu[j + 1])] = True
    imp.store.update(pos[answer], torch.where(hard, 3.0, 1.0)[answer].double())
    w = imp.weights(pb)
    assert float(w[answer & hard].min()) >= 1.0 >= float(w[answer & ~hard].max())
    assert float(w[answer & hard].mean()) > 2.5 * float(w[answer & ~hard].mean())
    rules_cfg = MaskConfig(block_size=8, sigma_low=0.4, sigma_high=0.4)
    n = 300
    freq_loss = torch.zeros(T)
    freq_rules = torch.zeros(T)
    for seed in range(n):
        freq_loss += mask_batch(pb, cfg, mask_token_id=tok.mask_id, seed=seed, importance=w).labels[:T].ne(-100).float()
        freq_rules += mask_batch(pb, rules_cfg, mask_token_id=tok.mask_id, seed=seed).labels[:T].ne(-100).float()
    rate = lambda f, m: float(f[m].sum()) / (n * int(m.sum()))  # noqa: E731
    hi_loss, lo_loss = rate(freq_loss, answer & hard), rate(freq_loss, answer & ~hard)
    hi_rules = rate(freq_rules, answer & hard)
    se = lambda p, m: math.sqrt(p * (1 - p) / (n * int(m.sum())))  # noqa: E731
    assert hi_loss - hi_rules > 5 * (se(hi_loss, answer & hard) + se(hi_rules, answer & hard))
    assert hi_loss - lo_loss > 5 * (se(hi_loss, answer & hard) + se(lo_loss, answer & ~hard))
    # mass is conserved: the overall masked share stays σ = 0.4 (5 standard errors)
    total = rate(freq_loss, answer)
    assert abs(total - 0.4) < 5 * se(0.4, answer) + 0.5 / int(answer.sum())


# ---- the training loop -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """8 steps (48 samples, 8 per step: the second epoch starts at step 6) of every source."""
    root = tmp_path_factory.mktemp("sources")
    out = {}
    for pr in ("rules", "none", "loss", "confidence", "mix"):
        out[pr] = train(tiny_config(root / pr, max_steps=8, mask__priority=pr), evaluate=False)
        out[pr]["dir"] = root / pr
    return out


def test_each_source_trains_and_reports_its_cost(runs):
    for pr, res in runs.items():
        assert res["priority"] == pr and all(math.isfinite(x) for x in res["losses"]) and len(res["losses"]) == 8
        rows = _rows(res["dir"])
        if pr in ("rules", "none"):
            assert res["importance"] is None and all(r["importance_ms"] == "" for r in rows)
            continue
        imp = res["importance"]
        assert imp["source"] == pr and imp["ms_per_step"] > 0 and imp["store_bytes"] > 0 and imp["peak_bytes"] > 0
        assert all(float(r["importance_ms"]) > 0 and int(r["importance_store_bytes"]) == imp["store_bytes"]
                   for r in rows)
        cfg = json.loads((res["dir"] / "config.json").read_text())
        assert cfg["mask"]["device"] == "step"  # switched automatically


def test_sources_change_the_masks_only_where_they_should(runs):
    none, rules, loss, mix = (runs[k]["losses"] for k in ("none", "rules", "loss", "mix"))
    # first epoch: nothing scored when a sample is first trained -> weights 1: "loss" is "none"
    # bit for bit, and "mix" (two levels: w on dense spans, 1 elsewhere) is "rules" bit for bit
    assert loss[:6] == none[:6] and mix[:6] == rules[:6]
    # second epoch: the scores shape the masks
    assert loss[6:] != none[6:] and mix[6:] != rules[6:]
    assert runs["confidence"]["losses"] != none


def test_every_answer_token_is_scored_once_per_visit_and_no_prompt_token(runs, data):
    for pr in ("loss", "confidence", "mix"):
        res = runs[pr]
        scores = _store_of(res["dir"])
        cfg = TrainConfig.from_dict(json.loads((res["dir"] / "config.json").read_text()))
        from dllm_masks.data.dataset import build_data

        d = build_data(cfg.data, cfg.mask.block_size, cfg.seed, progress=False, log=lambda *_: None)
        k = 0
        for s in d.train:  # 8 steps x 8 samples >= 48: every sample trained at least once
            seg = scores[k:k + len(s)]
            assert bool(torch.isnan(seg[:s.prompt_len]).all()) and bool(torch.isfinite(seg[s.prompt_len:]).all())
            assert bool((seg[s.prompt_len:] >= 0).all())
            if pr == "confidence":
                assert bool((seg[s.prompt_len:] <= 1).all())
            k += len(s)
        assert k == scores.numel()


@pytest.mark.parametrize("pr,every", [("loss", 1), ("confidence", 2), ("mix", 3)])
def test_resume_restores_the_store_and_continues_identically(tmp_path, pr, every):
    over = dict(max_steps=9, mask__priority=pr, mask__importance_every=every)
    full = train(tiny_config(tmp_path / "full", **over), evaluate=False)
    part = train(tiny_config(tmp_path / "part", ckpt_every=2, **over), stop_after=5, evaluate=False)
    assert part["steps"] == 5
    rest = train(tiny_config(tmp_path / "part", ckpt_every=2, **over), evaluate=False)
    assert rest["start_step"] == 5 and full["losses"][5:] == rest["losses"]
    assert torch.equal(_store_of(tmp_path / "full").nan_to_num(-1.0), _store_of(tmp_path / "part").nan_to_num(-1.0))
    p1, p2 = _final_params(tmp_path / "full"), _final_params(tmp_path / "part")
    assert all(torch.equal(p1[k], p2[k]) for k in p1)


def test_scores_update_only_on_schedule_steps(tmp_path):
    train(tiny_config(tmp_path / "r", max_steps=7, ckpt_every=1, keep_ckpts=10, mask__priority="loss",
                      mask__importance_every=3), evaluate=False)
    s = {k: _store_of(tmp_path / "r", k) for k in range(1, 8)}
    same = lambda a, b: torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0))  # noqa: E731
    # updates at steps 0, 3, 6 (0-based): the store after steps 1..3 is the same, then after 4..6
    assert same(s[1], s[2]) and same(s[2], s[3]) and not same(s[3], s[4])
    assert same(s[4], s[5]) and same(s[5], s[6]) and not same(s[6], s[7])
    rows = _rows(tmp_path / "r")
    peaks = [int(r["importance_peak_bytes"]) for r in rows]
    assert [p > 0 for p in peaks] == [True, False, False, True, False, False, True]


def test_a_checkpoint_without_a_store_is_refused(tmp_path):
    train(tiny_config(tmp_path / "r", max_steps=3), stop_after=2, evaluate=False)
    path = ck.latest_checkpoint(str(tmp_path / "r" / "checkpoints"))[1]
    state = ck.load_checkpoint(path)
    state["fingerprint"]["mask.priority"] = "loss"
    ck.save_checkpoint(path, state, step=2)
    with pytest.raises(ck.CheckpointError, match="importance score store"):
        train(tiny_config(tmp_path / "r", max_steps=3, mask__priority="loss"), evaluate=False)


def test_torchrun_two_ranks_keep_one_store(tmp_path):
    """Two gloo ranks: every rank applies every rank's observations (a checksum is compared across
    ranks at each checkpoint, a mismatch fails the run); the store matches one process's."""
    import os
    import subprocess
    import sys

    over = dict(max_steps=8, ckpt_every=2, mask__priority="loss")
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(tiny_config(tmp_path / "ddp", **over)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dllm_masks.cli", "train", "--config", str(cfg_path), "--no-progress"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert res["world_size"] == 2 and res["importance"]["scored_tokens"] > 0
    one = train(tiny_config(tmp_path / "one", **over), evaluate=False)
    a, b = _store_of(tmp_path / "one"), _store_of(tmp_path / "ddp")
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)
    ddp = [float(r["loss"]) for r in _rows(tmp_path / "ddp")]
    for x, y in zip(one["losses"], ddp):
        assert abs(x - y) < 1e-4 * abs(x)


def test_demo_trains_the_annotation_free_path(tmp_path, capsys):
    from dllm_masks.cli import main

    rc = main(["demo", "--priority", "loss", "--brief", "--steps", "3", "--run-dir", str(tmp_path / "d"),
               "--threads", "1", "--set", "data.source=bundled:24", "--set", "data.eval_fraction=0.15",
               "--set", "progress=false"])
    out = capsys.readouterr().out
    assert rc == 0
    for line in ("demo (mask.priority=loss)", "no annotation", "training ignores the rule spans",
                 "trained steps 1-3", "held-out loss", "priority from the model (mask.priority=loss",
                 "ms per step", "demo finished in"):
        assert line in out, (line, out[-2000:])
    assert "--- held-out" not in out and "filled in by one forward pass" not in out  # --brief
    res = json.loads((tmp_path / "d" / "result.json").read_text())
    assert res["priority"] == "loss" and res["importance"]["scored_tokens"] > 0 and res["metrics"] == {}
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["mask"]["priority"] == "loss" and cfg["mask"]["device"] == "step" and cfg["eval"]["generate"] == 0


def test_in_the_loop_high_weight_tokens_are_masked_more_often(tmp_path, monkeypatch):
    """The weights the loop hands to the op shape its masks: over the second epoch of a "loss" run,
    view-0 tokens with weight > 1.5 are masked more often than those with weight < 0.67, by more
    than 5 binomial standard errors. (The tiny model's per-token losses are within ~20 % of their
    sample's mean after a few steps, so γ = 8 spreads them.)"""
    import dllm_masks.train.loop as loop

    got = []
    real = loop.mask_batch

    def spy(pb, cfg, **kw):
        b = real(pb, cfg, **kw)
        if kw.get("importance") is not None:
            got.append((kw["importance"], b.labels[:pb.num_tokens] != -100))
        return b

    monkeypatch.setattr(loop, "mask_batch", spy)
    train(tiny_config(tmp_path / "r", max_steps=12, mask__priority="loss", mask__importance_gamma=8.0),
          evaluate=False)
    w = torch.cat([g[0] for g in got])
    m = torch.cat([g[1] for g in got])
    hi, lo = w > 1.5, w < 0.67
    assert int(hi.sum()) > 50 and int(lo.sum()) > 50
    p_hi, p_lo = float(m[hi].float().mean()), float(m[lo].float().mean())
    se = math.sqrt(p_hi * (1 - p_hi) / int(hi.sum()) + p_lo * (1 - p_lo) / int(lo.sum()))
    assert p_hi - p_lo > 5 * se, (p_hi, p_lo, se)
