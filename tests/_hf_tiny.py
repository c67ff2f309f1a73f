"""A tiny randomly initialized Llama trained through dllm_masks.integrations.hf (shared by the HF
tests; ``python tests/_hf_tiny.py OUT.json`` under torchrun runs the distributed check)."""
import json
import os
import sys

import torch

PAD, MASK, EOS, VOCAB = 0, 1, 2, 48


def dataset(n=256, seed=0, with_priority=True):
    """Prompt: 4 random tokens; answer: the prompt reversed, shifted by 20, then EOS."""
    import datasets

    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        k = 3 + int(torch.randint(0, 3, (1,), generator=g))
        p = torch.randint(4, 24, (k,), generator=g).tolist()
        a = [x + 20 for x in reversed(p)] + [EOS]
        row = {"input_ids": p + a, "labels": [-100] * k + a, "sample_id": i}
        if with_priority:
            row["priority"] = [0] * k + [1] * (len(a) - 1) + [0]
        rows.append(row)
    return datasets.Dataset.from_list(rows)


def model(seed=0):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   pad_token_id=PAD, bos_token_id=None, eos_token_id=EOS, use_cache=False,
                                   attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(cfg)


def trainer(out_dir, *, max_steps=24, block_size=None, seed=0, record=None, save_steps=None, accum=1, batch=8,
            lr=3e-3, norm="sequence", **masker_kw):
    import transformers

    import dllm_masks as dm
    from dllm_masks.integrations.hf import DiffusionCollator, DiffusionTrainer

    class Recording(DiffusionTrainer):
        def get_batch_samples(self, it, n, device):
            batches, total = super().get_batch_samples(it, n, device)
            if record is not None:
                record.append(([b["dm_noisy_ids"].clone() for b in batches], float(total)))
            return batches, total

    args = transformers.TrainingArguments(
        output_dir=out_dir, max_steps=max_steps, per_device_train_batch_size=batch, learning_rate=lr,
        gradient_accumulation_steps=accum, logging_steps=1, save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500, report_to=[], use_cpu=True, seed=seed, data_seed=seed,
        dataloader_num_workers=0, disable_tqdm=True, warmup_steps=0, lr_scheduler_type="constant",
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None)
    masker = dm.Masker(MASK, seed=seed, block_size=block_size, **masker_kw)
    return Recording(model=model(seed), args=args, train_dataset=dataset(), masker=masker, loss_norm=norm,
                     data_collator=DiffusionCollator(pad_token_id=PAD, pad_to_multiple_of=block_size))


def losses(tr):
    return [h["loss"] for h in tr.state.log_history if "loss" in h]


if __name__ == "__main__":  # torchrun --nproc_per_node 2 tests/_hf_tiny.py OUT.json
    torch.set_num_threads(1)
    out = sys.argv[1]
    rec = []
    tr = trainer(os.path.dirname(out) + "/run", max_steps=8, record=rec, complementary=True, weight=2.0,
                 sigma=(0.3, 0.8), batch=4, accum=2)
    tr.train()
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    p = torch.cat([x.detach().reshape(-1) for x in tr.model.parameters()])
    gathered = [torch.zeros_like(p) for _ in range(world)]
    dist.all_gather(gathered, p)
    # one fingerprint per micro-batch: Σ positions of the masked tokens
    masks = torch.tensor([float(torch.nonzero(x.reshape(-1) == MASK).sum()) for m, _ in rec for x in m])
    all_masks = [torch.zeros_like(masks) for _ in range(world)]
    dist.all_gather(all_masks, masks)
    if rank == 0:
        json.dump({"world": world, "losses": losses(tr), "normalizers": [d for _, d in rec],
                   "params_equal": all(torch.equal(gathered[0], g) for g in gathered[1:]),
                   "masks_differ": not torch.equal(all_masks[0], all_masks[1]),
                   "backend": dist.get_backend()}, open(out, "w"))
