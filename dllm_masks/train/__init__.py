"""The reference block-diffusion SFT application (LLaDA-style, scaled to a CPU, DDP with torchrun).

>>> from dllm_masks.train import train
>>> result = train("configs/cpu-small.json")     # or a dict / TrainConfig
>>> result["final_loss"], result["heldout"], result["plot"]

Modules: ``config`` (TrainConfig), ``model`` (DiffusionLM, HFDiffusionLM), ``forward`` (one
masked forward pass, ``eval_mode``), ``loss`` (normalizations over a packed step), ``loop``
(train, held-out loss), ``checkpoint`` (atomic, verified), ``logs`` (CSV, plot).
Decoding and scoring live in :mod:`dllm_masks.eval`, which imports this package (never the
reverse): pass ``evaluators=[dllm_masks.eval.generation.after_training]`` to score generations.
"""
__all__ = ["train", "TrainConfig", "load_config"]


def __getattr__(name):  # lazy: importing the package does not pull in the loop and its data stack
    if name == "train":
        from .loop import train

        return train
    if name in ("TrainConfig", "load_config"):
        from . import config

        return getattr(config, name)
    raise AttributeError(name)
