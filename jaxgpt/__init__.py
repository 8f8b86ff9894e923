"""jaxgpt: GPT-2 in JAX/Flax, from raw text to a trained model.

The public API, re-exported here and imported on first use (so `jaxgpt.tokenizer.kinds` or a data-preparation
worker process does not load JAX); see the modules for the rest.
"""

import importlib

_EXPORTS = {
    "jaxgpt.config": ("Config", "DataConfig", "ModelConfig", "TrainConfig"),
    "jaxgpt.store.convert": ("save_hf", "save_jaxgpt"),
    "jaxgpt.data.text": ("load_corpus",),
    "jaxgpt.data.cache": ("prepare",),
    "jaxgpt.data.windows": ("get_batch", "sliding_windows"),
    "jaxgpt.train.engine": ("Engine",),
    "jaxgpt.train.task": ("Task",),
    "jaxgpt.errors": ("UserError",),
    "jaxgpt.store.loader": ("Loaded", "load", "load_pretrained"),
    "jaxgpt.model.gpt": ("GPT", "GPTClassifier", "KVCache", "count_params", "init_params"),
    "jaxgpt.model.sampling": ("generate",),
    "jaxgpt.model.objectives": ("language_model",),
    "jaxgpt.train.steps": ("TrainState", "eval_step", "train_step"),
    "jaxgpt.tokenizer.kinds": ("get_tokenizer", "tokenizer_from_meta"),
    "jaxgpt.train.pretrain": ("train",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'jaxgpt' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__():
    return __all__
