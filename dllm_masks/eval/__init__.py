"""Evaluation of trained models: block decoding (``decode``), generation-based metrics
(``generation``), and scoring (``scoring``: math final-answer match, code pass@k run in the
untrusted-code ``sandbox``). Imports the core, ``data`` and ``train``; nothing imports it but the
command line.

>>> from dllm_masks.eval.scoring import evaluate_code, math_accuracy
>>> from dllm_masks.eval.decode import generate
"""
__all__ = ["generate", "evaluate_code", "math_accuracy", "score_math", "run_program"]


def __getattr__(name):  # lazy: the sandbox and the decoder do not import each other
    if name == "generate":
        from .decode import generate

        return generate
    if name in ("evaluate_code", "math_accuracy", "score_math", "run_program"):
        from . import scoring

        return getattr(scoring, name)
    raise AttributeError(name)
