"""Small synthetic SFT data and tiny configs shared by the training, data and decoding tests."""
from __future__ import annotations

import random

import torch

torch.set_num_threads(1)  # the test machine is shared; one thread is also the deterministic setting

CODE_TEMPLATES = [
    ("def add_{n}(x):\n    \"\"\"Return x plus {n}.\"\"\"\n", "    return x + {n}\n", "x + {n}", "add_{n}",
     "def check(f):\n    assert f(1) == 1 + {n}\n"),
    ("def is_big_{n}(x):\n    \"\"\"Is x above {n}?\"\"\"\n", "    if x > {n}:\n        return True\n    return False\n",
     "x > {n}", "is_big_{n}", "def check(f):\n    assert f({n} + 1) and not f({n})\n"),
]


def records(n: int = 48, seed: int = 0):
    """Math and code records with hand-made spans (character offsets into the answer)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 3 == 2:
            p, a, dense, entry, test = CODE_TEMPLATES[i % 2]
            k = rng.randint(2, 99)
            p, a, dense, entry, test = (t.format(n=k) for t in (p, a, dense, entry, test))
            s = a.index(dense)
            out.append({"prompt": p, "answer": a, "spans": [[s, s + len(dense)]], "domain": "code",
                        "test": test, "entry_point": entry})
        else:
            x, y = rng.randint(1, 60), rng.randint(1, 60)
            a = f"We add {x} and {y}: {x} + {y} = {x + y}.\n#### {x + y}"
            s = a.index(f"= {x + y}") + 2
            out.append({"prompt": f"Question: what is {x} plus {y}?\nAnswer: ", "answer": a,
                        "spans": [[s, s + len(str(x + y))]], "domain": "math"})
    return out


def tokenized(n: int = 12, block_size: int = 8):
    """(compact tokenizer, tokenized samples) of ``records(n)``."""
    from dllm_masks.data import CompactTokenizer, load_samples, load_tokenizer, tokenize_samples

    base = load_tokenizer("deepseek")
    samples = load_samples(records(n))
    tok = CompactTokenizer(base, {i for s in samples for i in base.encode(s.prompt + s.answer)[0]})
    return tok, tokenize_samples(samples, tok, block_size=block_size, progress=False)


def tiny_config(run_dir, **over):
    """A model and data small enough for a step in well under a second on one thread."""
    cfg = {
        "run_dir": str(run_dir), "seed": 3, "max_steps": 6, "threads": 1, "progress": False,
        "data": {"source": records(), "tokenizer": "deepseek", "compact_vocab": True, "max_length": 96,
                 "token_budget": 256, "batch_size": 8},
        "mask": {"block_size": 8, "weight": 2.0, "complementary": True},
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_position": 128},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
    }
    for key, val in over.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = val
    return cfg
