"""jaxgpt: GPT-2 in JAX/Flax, from raw text to a trained model.

The public API, re-exported here; see the modules for the rest.
"""

from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig
from jaxgpt.convert import load_pretrained, save_hf, save_jaxgpt
from jaxgpt.data import get_batch, load_corpus, prepare, sliding_windows
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, KVCache, count_params, init_params
from jaxgpt.sampling import generate
from jaxgpt.steps import TrainState, eval_step, train_step
from jaxgpt.tokenizer import get_tokenizer, tokenizer_from_meta
from jaxgpt.trainer import train

__all__ = [
    "Config", "DataConfig", "ModelConfig", "TrainConfig", "get_batch", "load_corpus", "prepare",
    "sliding_windows", "UserError", "GPT", "KVCache", "count_params", "init_params", "generate",
    "TrainState", "eval_step", "train_step", "get_tokenizer", "tokenizer_from_meta", "train",
    "load_pretrained", "save_hf", "save_jaxgpt",
]
