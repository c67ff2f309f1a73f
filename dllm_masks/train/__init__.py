"""Reference block-diffusion SFT loop (LLaDA 2.0 / dFactory recipe, scaled to a CPU).

>>> from dllm_masks.train import train
>>> result = train("configs/tiny.json")          # or a dict / TrainConfig
>>> result["final_loss"], result["metrics"], result["plot"]

Modules: ``config`` (TrainConfig), ``model`` (DiffusionLM, HFDiffusionLM), ``loss``, ``loop``
(train), ``checkpoint`` (atomic, verified), ``decode`` (block-by-block sampling), ``eval_gen``
(decode + score), ``evaluate`` and ``sandbox`` (scoring generated code and math answers).
"""
__all__ = ["train", "TrainConfig", "load_config", "generate"]


def __getattr__(name):  # lazy: importing the sandbox or the evaluator does not pull in the loop
    if name == "train":
        from .loop import train

        return train
    if name in ("TrainConfig", "load_config"):
        from . import config

        return getattr(config, name)
    if name == "generate":
        from .decode import generate

        return generate
    raise AttributeError(name)
