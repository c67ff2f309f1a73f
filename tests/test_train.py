"""The reference SFT loop: loss goes down, normalizations, accumulation and DDP equal one big batch,
resume continues bit-identically (also after SIGKILL mid-checkpoint), bad checkpoints are refused."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _sft import records, tiny_config, tokenized
from dllm_masks.blockdiff import BlockDiffAttention, training_layout
from dllm_masks.data import MaskConfig, mask_batch, pack
from dllm_masks.train import checkpoint as ck
from dllm_masks.train.config import TrainConfig, load_config
from dllm_masks.train.loop import train
from dllm_masks.train.loss import loss_terms, masked_index, normalizer
from dllm_masks.train.model import DiffusionLM, ModelConfig

REPO = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _losses(run_dir):
    with open(Path(run_dir) / "log.csv") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


def _final_params(run_dir):
    step, path = ck.latest_checkpoint(str(Path(run_dir) / "checkpoints"))
    return step, ck.load_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def batch():
    tok, seqs = tokenized(12)
    pb = pack(seqs, list(range(len(seqs))), 2048)[0]
    return tok, mask_batch(pb, MaskConfig(block_size=8), mask_token_id=tok.mask_id, seed=0)


def _small_model(vocab):
    torch.manual_seed(0)
    return DiffusionLM(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2, max_position=256))


def test_loss_falls_on_a_fixed_batch(batch):
    tok, b = batch
    model = _small_model(tok.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    attn = BlockDiffAttention(training_layout(b.cu_seqlens, 8, views=2), "sdpa_docs")
    idx = masked_index(b)
    losses = []
    for _ in range(25):
        s, _ = loss_terms(model(b.input_ids, attn, idx), b, idx, "masked")
        loss = s / normalizer(b, "masked")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_loss_normalizations(batch):
    tok, b = batch
    model = _small_model(tok.vocab_size)
    attn = BlockDiffAttention(training_layout(b.cu_seqlens, 8, views=2), "sdpa")
    idx = masked_index(b)
    with torch.no_grad():
        logits = model(b.input_ids, attn, idx)
    ce = F.cross_entropy(logits, b.labels[idx], reduction="none")
    w = b.loss_weight[idx]
    s_masked, m = loss_terms(logits, b, idx, "masked")
    assert m == b.num_masked == idx.numel()
    torch.testing.assert_close(s_masked / normalizer(b, "masked"), (w * ce).sum() / m)
    torch.testing.assert_close(loss_terms(logits, b, idx, "maskable")[0] / normalizer(b, "maskable"),
                               (w * ce).sum() / b.maskable_per_seq.sum())
    # per sequence: mean over the 2B noisy sequences of their own sums over their maskable counts
    seq = b.seq_of_token[idx]
    per = torch.zeros(b.num_seqs).index_add_(0, seq, w * ce) / b.maskable_per_seq
    torch.testing.assert_close(loss_terms(logits, b, idx, "sequence")[0] / normalizer(b, "sequence"), per.mean())
    # the "sigma" weights are 1/σ and 1/(1-σ): with complementary views they are >= 1/0.8
    assert bool((w >= 1 / 0.8 - 1e-6).all()) and bool((w <= 1 / 0.2 + 1e-4).all())


def test_accumulation_equals_one_big_batch(tmp_path):
    a = train(tiny_config(tmp_path / "one", max_steps=3, data__token_budget=2048), evaluate=False)
    b = train(tiny_config(tmp_path / "acc", max_steps=3, data__token_budget=96), evaluate=False)
    rows = list(csv.DictReader(open(tmp_path / "acc" / "log.csv")))
    assert all(int(r["micro_batches"]) >= 3 for r in rows)
    for x, y in zip(a["losses"], b["losses"]):
        assert abs(x - y) < 1e-5 * abs(x)
    pa, pb = _final_params(tmp_path / "one")[1], _final_params(tmp_path / "acc")[1]
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=1e-6)


def test_masking_in_workers_or_in_the_step_trains_identically(tmp_path):
    a = train(tiny_config(tmp_path / "a", max_steps=3), evaluate=False)
    b = train(tiny_config(tmp_path / "b", max_steps=3, data__num_workers=2, mask__device="step"), evaluate=False)
    assert a["losses"] == b["losses"]


def test_resume_is_bit_identical(tmp_path):
    full = train(tiny_config(tmp_path / "full"), evaluate=False)
    part = train(tiny_config(tmp_path / "part", ckpt_every=2), stop_after=3, evaluate=False)
    assert part["steps"] == 3 and len(ck.list_checkpoints(str(tmp_path / "part" / "checkpoints"))) == 2
    rest = train(tiny_config(tmp_path / "part", ckpt_every=2), evaluate=False)
    assert rest["start_step"] == 3 and rest["steps"] == 6
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")
    assert full["losses"][3:] == rest["losses"]
    (s1, p1), (s2, p2) = _final_params(tmp_path / "full"), _final_params(tmp_path / "part")
    assert s1 == s2 == 6 and all(torch.equal(p1[k], p2[k]) for k in p1)
    # a finished run resumed again has nothing to do
    again = train(tiny_config(tmp_path / "part"), evaluate=False)
    assert again["losses"] == [] and again["steps"] == 6


def test_sigkill_during_checkpoint_write_then_resume(tmp_path):
    """Kill -9 a run while it writes a checkpoint; the resumed run matches an uninterrupted one."""
    cfg = tiny_config(tmp_path / "run", ckpt_every=2, keep_ckpts=5)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    marker = tmp_path / "paused"
    env = _env()
    env.update(DLLM_MASKS_CKPT_PAUSE_STEP="4", DLLM_MASKS_CKPT_PAUSE_FILE=str(marker))
    cmd = [sys.executable, "-m", "dllm_masks.cli", "train", "--config", str(cfg_path), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "the writer never reached the pause point"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckdir = tmp_path / "run" / "checkpoints"
    names = sorted(os.listdir(ckdir))
    assert names[0] == "step-00000002.pt" and any(".tmp-" in n for n in names), names
    half = [n for n in names if ".tmp-" in n][0]
    with pytest.raises(ck.CheckpointError, match="truncated"):
        ck.load_checkpoint(str(ckdir / half))
    assert [s for s, _ in _losses(tmp_path / "run")] == [1, 2, 3, 4]  # steps 3-4 ran but were not saved

    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming from" in out.stdout and "step 2)" in out.stdout
    assert not any(".tmp-" in n for n in os.listdir(ckdir))
    ref = train(tiny_config(tmp_path / "ref"), evaluate=False)
    assert _losses(tmp_path / "run") == _losses(tmp_path / "ref")
    p1, p2 = _final_params(tmp_path / "run")[1], _final_params(tmp_path / "ref")[1]
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert len(ref["losses"]) == 6


def test_bad_checkpoints_are_refused(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records()))
    train(tiny_config(tmp_path / "r", max_steps=2, data__source=str(data)), evaluate=False)
    step, path = ck.latest_checkpoint(str(tmp_path / "r" / "checkpoints"))
    raw = bytearray(Path(path).read_bytes())
    # a different config
    with pytest.raises(ck.CheckpointError, match=r"another config \(mask.weight: 2.0 -> 1.0"):
        train(tiny_config(tmp_path / "r", max_steps=2, mask__weight=1.0, data__source=str(data)), evaluate=False)
    # the same data file with other contents
    data.write_text("".join(json.dumps(r) + "\n" for r in records(seed=1)))
    with pytest.raises(ck.CheckpointError, match="data or tokenizer changed"):
        train(tiny_config(tmp_path / "r", max_steps=2, data__source=str(data)), evaluate=False)
    data.write_text("".join(json.dumps(r) + "\n" for r in records()))
    # a flipped byte
    raw[len(raw) // 2] ^= 0xFF
    Path(path).write_bytes(bytes(raw))
    with pytest.raises(ck.CheckpointError, match="corrupt"):
        train(tiny_config(tmp_path / "r", max_steps=2, data__source=str(data)), evaluate=False)
    # not a checkpoint
    Path(path).write_bytes(b"hello")
    with pytest.raises(ck.CheckpointError, match="not a dllm-masks checkpoint"):
        ck.load_checkpoint(path)
    # resume=False starts over instead
    res = train(tiny_config(tmp_path / "r", max_steps=2, data__source=str(data)), resume=False, evaluate=False)
    assert res["start_step"] == 0 and res["steps"] == 2


def test_torchrun_two_ranks_match_one_process(tmp_path):
    cfg = tiny_config(tmp_path / "ddp", max_steps=3)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dllm_masks.cli", "train", "--config", str(cfg_path), "--no-progress"]
    env = _env()
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert res["world_size"] == 2
    one = train(tiny_config(tmp_path / "one", max_steps=3), evaluate=False)
    ddp_losses = [float(x) for _, x in _losses(tmp_path / "ddp")]
    for x, y in zip(one["losses"], ddp_losses):
        assert abs(x - y) < 1e-5 * abs(x)
    p1, p2 = _final_params(tmp_path / "one")[1], _final_params(tmp_path / "ddp")[1]
    for k in p1:
        torch.testing.assert_close(p1[k], p2[k], rtol=1e-4, atol=1e-6)


def test_generation_eval_end_to_end(tmp_path):
    from dllm_masks.eval.generation import after_training
    from dllm_masks.eval.scoring import score_math

    res = train(tiny_config(tmp_path / "g", max_steps=2, data__eval_fraction=0.25,
                            eval={"generate": 3, "generate_train": 1, "gen_length": 12, "steps_per_block": 4}),
                evaluators=[after_training])
    m = res["metrics"]
    gens = res["generations"]
    assert len(gens) == 4 and {g["split"] for g in gens} == {"held-out", "train"}
    assert all(isinstance(g["generated"], str) and "<mask>" not in g["generated"] for g in gens)
    # the metrics are the per-generation verdicts of the held-out split, and the math verdicts are
    # what scoring the generated text against the reference gives
    held = [g for g in gens if g["split"] == "held-out"]
    math_g = [g for g in held if g["domain"] == "math"]
    code_g = [g for g in held if g["domain"] == "code"]
    assert m["math_n"] == len(math_g) >= 1 and m["code_n"] == len(code_g) >= 1
    assert m["math_accuracy"] == sum(g["correct"] for g in math_g) / len(math_g)
    assert m["code_pass@1"] == sum(g["correct"] for g in code_g) / len(code_g)
    assert [g["correct"] for g in math_g] == score_math([g["generated"] for g in math_g],
                                                        [g["reference"] for g in math_g]).correct
    assert sum(m["code_status"].values()) == m["code_n"]
    assert m["code_status"].get("passed", 0) == sum(g["correct"] for g in code_g)
    h = res["heldout"]
    assert res["eval_loss"] == h["loss"] and h["tokens"] > 0
    # overall accuracy is the token-weighted mean of the dense and the other tokens' accuracies
    assert min(h["dense_acc"], h["other_acc"]) <= h["acc"] <= max(h["dense_acc"], h["other_acc"])
    assert h["dense_acc"] is not None and h["other_acc"] is not None  # the hand-made spans mark dense tokens
    assert os.path.isfile(res["plot"])


def test_heldout_metrics_use_the_same_masks_for_every_recipe(tmp_path, monkeypatch):
    """Held-out masks are uniform and fixed: runs that differ only in w and seed see the same ones."""
    import dllm_masks.train.loop as L
    from dllm_masks.data.dataset import build_data

    cfg_a = TrainConfig.from_dict(tiny_config(tmp_path / "a", data__eval_fraction=0.25))
    cfg_b = TrainConfig.from_dict(tiny_config(tmp_path / "b", seed=9, mask__weight=5.0, data__eval_fraction=0.25))
    data = build_data(cfg_a.data, 8, cfg_a.seed, progress=False)
    model = _small_model(data.tokenizer.vocab_size)
    ha = L.heldout_metrics(model, data, cfg_a, torch.device("cpu"))
    hb = L.heldout_metrics(model, data, cfg_b, torch.device("cpu"))
    assert ha == hb and ha["tokens"] > 0 and ha["acc"] < 0.5

    # the metric itself: a model that predicts every label scores 1.0 with a near-zero loss
    real, seen = L.mask_batch, {}

    def spy(pb, *a, **k):
        seen["batch"] = real(pb, *a, **k)
        return seen["batch"]

    class Oracle(torch.nn.Module):
        def forward(self, ids, attn, idx):
            return F.one_hot(seen["batch"].labels[idx], data.tokenizer.vocab_size).float() * 50

    monkeypatch.setattr(L, "mask_batch", spy)
    h = L.heldout_metrics(Oracle(), data, cfg_a, torch.device("cpu"))
    assert h["acc"] == h["dense_acc"] == h["other_acc"] == 1.0 and h["loss"] < 1e-6


def test_config_refusals(tmp_path):
    with pytest.raises(ValueError, match="optim.nope: unknown config key"):
        TrainConfig.from_dict({"optim": {"nope": 1}})
    with pytest.raises(ValueError, match="loss_norm"):
        TrainConfig.from_dict({"loss_norm": "mean"})
    with pytest.raises(ValueError, match="data.token_budget"):
        TrainConfig.from_dict({"data": {"token_budget": 64, "max_length": 128}})
    with pytest.raises(ValueError, match="model.n_heads"):
        TrainConfig.from_dict({"model": {"d_model": 30, "n_heads": 4}})
    with pytest.raises(ValueError, match="--config"):
        load_config(str(tmp_path / "missing.json"))
    c = load_config(None, ["mask.weight=1.5", "data.tokenizer=deepseek", "eval.generate=2"])
    assert c.mask.weight == 1.5 and c.data.tokenizer == "deepseek" and c.eval.generate == 2


def test_hf_adapter_follows_the_block_diffusion_mask(batch):
    """Through the adapter, a Hugging Face causal LM attends as the layout says, not causally."""
    pytest.importorskip("transformers")
    from dllm_masks.train.model import HFDiffusionLM

    tok, b = batch
    cfg = ModelConfig(kind="hf", vocab_size=tok.vocab_size, hf_config={
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256})
    torch.manual_seed(0)
    model = HFDiffusionLM.from_config(cfg).eval()
    lay = training_layout(b.cu_seqlens, 8, views=2)
    attn = BlockDiffAttention(lay, "sdpa")
    T = int(b.cu_seqlens[-1])
    i = 8 + 2  # view 0, first document, block 1, slot 2 (every test sequence is longer than 16)
    assert int(lay.position[i]) == 10 and int(b.cu_seqlens[1]) > 24
    idx = torch.tensor([i])

    def logits_with(pos, tok_id=5):
        ids = b.input_ids.clone()
        ids[pos] = tok_id if int(ids[pos]) != tok_id else tok_id + 1
        with torch.no_grad():
            return model(ids, attn, idx)

    with torch.no_grad():
        base = model(b.input_ids, attn, idx)
    assert base.shape == (1, tok.vocab_size)
    assert not torch.allclose(logits_with(i + 3), base)       # later token, same noisy block: seen
    assert not torch.allclose(logits_with(2 * T + 3), base)   # clean copy of an earlier block: seen
    torch.testing.assert_close(logits_with(2 * T + 10), base)  # clean copy of its own block: not seen
    torch.testing.assert_close(logits_with(i + 8), base)       # next noisy block: not seen
    torch.testing.assert_close(logits_with(T + 10), base)      # the complementary view: not seen


def test_train_loop_drives_an_hf_model(tmp_path):
    pytest.importorskip("transformers")
    hf = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 128}
    res = train(tiny_config(tmp_path / "hf", max_steps=4, model={"kind": "hf", "hf_config": hf, "max_position": 128},
                            optim={"lr": 1e-2, "warmup_steps": 1}), evaluate=False)
    assert len(res["losses"]) == 4 and res["losses"][-1] < res["losses"][0]


def test_fill_in_example_marks_predictions(tmp_path):
    from dllm_masks.data.dataset import build_data
    from dllm_masks.eval.generation import fill_in_example

    cfg = TrainConfig.from_dict(tiny_config(tmp_path / "f", data__eval_fraction=0.25))
    data = build_data(cfg.data, 8, cfg.seed, progress=False)
    model = _small_model(data.tokenizer.vocab_size)
    text = fill_in_example(model, data, cfg, torch.device("cpu"))
    assert text.count("[") >= 3 and "≠" in text          # an untrained model fills in wrongly
    s = sorted([x for x in data.eval if bool(x.priority.any())],
               key=lambda x: (data.eval_samples[x.index].domain != "math", len(x)))[0]
    answer = data.eval_samples[s.index].answer
    # putting the true token back into every bracket gives the answer (and its <eos>)
    import re
    truth = re.sub(r"\[(?:[^\]≠]*≠)?([^\]]*)\]†?", lambda m: m.group(1), text).replace("⏎", "\n")
    assert truth.replace("<eos>", "") == answer
