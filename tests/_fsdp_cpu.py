"""torchrun --nproc_per_node 2 tests/_fsdp_cpu.py OUT.json: torch FSDP2 (fully_shard) on the CPU
with gloo, trained on dm.diffusion_loss with the step's global normalizer; rank 0 checks the
sharded gradient against an unsharded copy on the whole global batch."""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
import _hf_tiny as H  # noqa: E402

import dllm_masks as dm  # noqa: E402
from dllm_masks.integrations.hf import DiffusionCollator  # noqa: E402
from dllm_masks.integrations.recipes import model_inputs  # noqa: E402


def main(out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from torch.distributed.fsdp import fully_shard

    rank, world = dist.get_rank(), dist.get_world_size()
    ref = H.model(0)
    model = H.model(0)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    ds, col = H.dataset(16), DiffusionCollator(pad_token_id=H.PAD)
    batches = [col([ds[i] for i in range(r * 4, r * 4 + 4)]) for r in range(world)]
    maskers = [dm.Masker(H.MASK, complementary=True, block_size=4, rank=r, world_size=world) for r in range(world)]
    masked = [m(b["input_ids"], labels=b["labels"], attention_mask=b["attention_mask"]) for m, b in zip(maskers, batches)]
    D = sum(dm.loss_normalizer(mb, "sequence") for mb in masked)  # what an all-reduce of the shares gives
    b, mb = batches[rank], masked[rank]
    logits = model(**model_inputs(b["input_ids"], b["attention_mask"], mb, block_size=4)).logits
    loss = dm.diffusion_loss(logits, mb, norm="sequence", normalizer=D) * world  # FSDP averages over ranks
    loss.backward()
    grads = [p.grad.full_tensor() for p in model.parameters()]
    total = torch.tensor([float(loss.detach()) / world])
    dist.all_reduce(total)
    if rank == 0:
        ref_loss = sum(dm.diffusion_loss(ref(**model_inputs(b["input_ids"], b["attention_mask"], mb, block_size=4)).logits,
                                         mb, norm="sequence", normalizer=D) for b, mb in zip(batches, masked))
        ref_loss.backward()
        diff = max(float((g - p.grad).abs().max()) for g, p in zip(grads, ref.parameters()))
        scale = max(float(p.grad.abs().max()) for p in ref.parameters())
        json.dump({"world": world, "sharded": type(model).__name__, "loss": float(total), "ref_loss": float(ref_loss.detach()),
                   "max_grad_diff": diff, "max_grad": scale}, open(out, "w"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
