"""Pretrained GPT-2 weights in and out: OpenAI's TensorFlow release and Hugging Face directories.

Every format passes through one table of Hugging Face tensor names without the `transformer.` prefix
("wte.weight", "h.0.attn.c_attn.weight", ...), each paired with its path in the Flax params tree and its
shape. The table is derived from the model's own parameter tree (`jax.eval_shape` of its initialisation),
so it cannot drift from the model. GPT-2's Conv1D weights are stored (in, out), as Flax Dense kernels are,
so no tensor is transposed; OpenAI's TensorFlow weights carry one extra leading axis of size 1, which is
dropped. The output head is tied to `wte` in all three formats.

Kinds of directory (see `jaxgpt.store.loader.detect`): "hf" (`config.json` + `model.safetensors`, a sharded
`model.safetensors.index.json`, or a `pytorch_model.bin` read only with PyTorch's weights_only loader),
"openai" (`hparams.json` + `model.ckpt.*`, read without TensorFlow) and "jaxgpt" (config.json +
checkpoints/). Safetensors files are read and written with the `safetensors` package.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgpt.config import Config, DataConfig, ModelConfig, validate
from jaxgpt.errors import UserError
from jaxgpt.files import read_json_object, staged_dir, write_json
from jaxgpt.model.gpt import init_params
from jaxgpt.store import checkpoint
from jaxgpt.store.openai import read_tf_checkpoint
from jaxgpt.tokenizer.kinds import gpt2_files

HF, OPENAI, JAXGPT = "hf", "openai", "jaxgpt"
SHARD_BYTES = 5 * 2**30  # transformers' default largest shard
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_COPY = "jaxgpt_tokenizer.json"  # a jaxgpt tokenizer travels with an exported HF directory
_HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in old HF files, not weights
_HF_LEAF = {"embedding": "weight", "kernel": "weight", "scale": "weight", "bias": "bias"}


def hf_name(path: tuple[str, ...]) -> str:
    """('h_0', 'attn', 'c_attn', 'kernel') -> 'h.0.attn.c_attn.weight'; ('wte', 'embedding') -> 'wte.weight'."""
    *mods, leaf = path
    if mods[0].startswith("h_"):
        mods = ["h", mods[0][2:], *mods[1:]]
    return ".".join([*mods, _HF_LEAF[leaf]])


_BLOCK_ORDER = {"ln_1": 0, "attn": 1, "ln_2": 2, "mlp": 3}


def _hf_order(path: tuple[str, ...]) -> tuple:
    """Hugging Face's order of tensors: wte, wpe, the blocks by number (ln_1, attn, ln_2, mlp; each weight
    before its bias), ln_f."""
    top, leaf = path[0], path[-1]
    block = (int(top[2:]), _BLOCK_ORDER[path[1]], path[2:-1]) if top.startswith("h_") else ()
    return {"wte": 0, "wpe": 1, "ln_f": 3}.get(top, 2), block, leaf == "bias"


@functools.cache
def param_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Params path -> shape of every weight of a GPT with this config, from the model itself."""
    shapes = traverse_util.flatten_dict(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
    return {path: tuple(s.shape) for path, s in shapes.items()}


@functools.cache
def name_table(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """HF name -> (Flax params path, shape) for every tensor of a GPT-2 with this config, in HF's order."""
    shapes = param_shapes(cfg)
    return {hf_name(path): (path, shapes[path]) for path in sorted(shapes, key=_hf_order)}


def _tf_name(hf_name: str) -> str:
    """'h.0.attn.c_attn.weight' -> 'model/h0/attn/c_attn/w'; 'ln_f.weight' -> 'model/ln_f/g'."""
    *mods, leaf = hf_name.split(".")
    if mods[0] in ("wte", "wpe"):
        return f"model/{mods[0]}"
    if mods[0] == "h":
        mods = [f"h{mods[1]}", *mods[2:]]
    leaf = "b" if leaf == "bias" else ("g" if mods[-1].startswith("ln") else "w")
    return "model/" + "/".join([*mods, leaf])


def _is_conv(hf_name: str) -> bool:
    return hf_name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))


def is_gpt2(cfg: ModelConfig) -> bool:
    """Whether `cfg` is GPT-2's architecture (none of the modern options), whatever its size."""
    return (cfg.position == "learned" and cfg.norm == "layernorm" and cfg.mlp == "gelu" and cfg.bias
            and cfg.tie_embeddings and not cfg.qk_norm and cfg.kv_heads == cfg.n_head
            and cfg.mlp_width == 4 * cfg.n_embd and cfg.head_dim * cfg.n_head == cfg.n_embd)


def describe(cfg: ModelConfig) -> str:
    return (f"n_layer={cfg.n_layer}, n_head={cfg.n_head}, n_embd={cfg.n_embd}, vocab={cfg.vocab_size}, "
            f"context={cfg.block_size}")


def _to_params(cfg: ModelConfig, tensors: dict, source: Path, key: Callable[[str], str],
               stored_shape: Callable[[str, tuple], tuple] = lambda n, s: s, ignore: frozenset = frozenset()):
    """Check `tensors` (named as the source names them, via `key`) against the table; build params."""
    table = name_table(cfg)
    for name, (_, shape) in table.items():
        if key(name) not in tensors:
            raise UserError(f"{source} has no tensor {key(name)!r}, which a GPT-2 with {describe(cfg)} needs; "
                            "the download is incomplete or its config does not match its weights")
        found, expected = tuple(tensors[key(name)].shape), stored_shape(name, shape)
        if found != expected:
            raise UserError(f"tensor {key(name)!r} in {source} has shape {found}, expected {expected} for "
                            f"{describe(cfg)}; the config does not match the weights")
    extra = sorted(set(tensors) - {key(n) for n in table} - ignore)
    if extra:
        raise UserError(f"{source} has tensor {extra[0]!r} (and {len(extra) - 1} more) that a GPT-2 with "
                        f"{describe(cfg)} does not have; the config does not match the weights")
    params: dict = {}
    for name, (path, shape) in table.items():
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        array = np.asarray(tensors[key(name)]).reshape(shape)  # drops TF's leading conv axis
        node[path[-1]] = jnp.asarray(array, dtype=jnp.dtype(cfg.param_dtype))
    return params


def _read_json(path: Path) -> dict:
    return read_json_object(path, "download it again")


def _model_config(path: Path, **fields) -> ModelConfig:
    try:
        cfg = ModelConfig(**{k: int(v) if k != "layer_norm_eps" else float(v) for k, v in fields.items()})
        validate(Config(model=cfg))
    except (TypeError, ValueError):
        raise UserError(f"{path} has a missing or non-numeric size ({fields}); download it again") from None
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return cfg


def _hf_config(path: Path) -> ModelConfig:
    d = _read_json(path)
    if d.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"{path} describes a {d['model_type']!r} model; jaxgpt reads GPT-2, Llama and Qwen3 "
                        "(model_type 'gpt2', 'llama', 'qwen3')")
    unsupported = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"), "scale_attn_weights": (True,),
                   "scale_attn_by_inverse_layer_idx": (False,), "tie_word_embeddings": (True,),
                   "add_cross_attention": (False,), "n_inner": (None, 4 * d.get("n_embd", 0))}
    for key, allowed in unsupported.items():
        if key in d and d[key] not in allowed:
            raise UserError(f"{path} sets {key}={d[key]!r}, which jaxgpt's GPT-2 does not implement "
                            f"(supported: {', '.join(map(repr, allowed))})")
    return _model_config(path, vocab_size=d.get("vocab_size"), block_size=d.get("n_positions", d.get("n_ctx")),
                         n_layer=d.get("n_layer"), n_head=d.get("n_head"), n_embd=d.get("n_embd"),
                         layer_norm_eps=d.get("layer_norm_epsilon", 1e-5))


def _openai_config(path: Path) -> ModelConfig:
    d = _read_json(path)
    return _model_config(path, vocab_size=d.get("n_vocab"), block_size=d.get("n_ctx"), n_layer=d.get("n_layer"),
                         n_head=d.get("n_head"), n_embd=d.get("n_embd"))


def _torch_tensors(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise UserError(f"{path} is a PyTorch file, and reading it needs PyTorch: `pip install torch` (the CPU "
                        "build is enough), or use the model.safetensors version of these weights") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except Exception as e:
        raise UserError(f"cannot load {path} with torch.load(weights_only=True): "
                        f"{str(e).strip().splitlines()[0][:200]}; it is damaged or holds more than tensors") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise UserError(f"{path} is not a state dict of tensors")
    return {k: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for k, t in state.items()}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a NumPy array (bfloat16 through ml_dtypes), or one line
    saying what is wrong with the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as e:
        reason = str(e).removeprefix("Error while deserializing header: ")
        if "not fully covered" in reason:
            reason = "truncated: its header describes more bytes than the file holds"
        raise UserError(f"{path} is not a valid safetensors file ({reason}); download or export it again") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.require(v, requirements="C") for k, v in tensors.items()}, path, metadata=metadata)  # keeps 0-d


def write_hf_weights(folder: Path, tensors: dict[str, np.ndarray], max_shard_bytes: int = SHARD_BYTES) -> None:
    """Hugging Face's weight files, as `hf_tensors` reads them: one model.safetensors, or shards of at most
    `max_shard_bytes` (a larger tensor alone) with model.safetensors.index.json."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    if len(shards) == 1:
        return write_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})
    weight_map = {}
    for n, shard in enumerate(shards, 1):
        file = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(folder / file, shard, {"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    write_json(folder / "model.safetensors.index.json",
               {"metadata": {"total_size": sum(a.nbytes for a in tensors.values())}, "weight_map": weight_map})


def hf_tensors(d: Path) -> dict[str, np.ndarray]:
    if (d / "model.safetensors").is_file():
        return read_safetensors(d / "model.safetensors")
    index = d / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index} has no weight_map; download it again")
        tensors = {}
        for file in sorted(set(weight_map.values())):
            shard = read_safetensors(d / file)
            tensors.update({k: v for k, v in shard.items() if weight_map.get(k) == file})
        return tensors
    return _torch_tensors(d / "pytorch_model.bin")


def tf_prefix(d: Path) -> Path | None:
    """The checkpoint prefix of OpenAI's release in `d` (its one `*.index` file without the suffix)."""
    indexes = sorted(d.glob("*.index"))
    return indexes[0].with_suffix("") if len(indexes) == 1 else None


def hf_model_config(d: Path) -> ModelConfig:
    return _hf_config(d / "config.json")


def openai_model_config(d: Path) -> ModelConfig:
    return _openai_config(d / "hparams.json")


def read_hf(d: Path) -> tuple[ModelConfig, dict]:
    """(config, GPT params) of a Hugging Face GPT-2 directory."""
    cfg = hf_model_config(d)
    tensors = hf_tensors(d)
    prefix = "transformer." if any(k.startswith("transformer.") for k in tensors) else ""
    head = tensors.get("lm_head.weight")
    wte = tensors.get(prefix + "wte.weight")
    if head is not None and wte is not None and not np.array_equal(head, wte):
        raise UserError(f"{d} has an output head (lm_head.weight) that differs from wte; jaxgpt ties them")
    ignore = frozenset({"lm_head.weight"} | {k for k in tensors if k.endswith(_HF_BUFFERS)})
    return cfg, _to_params(cfg, tensors, d, lambda n: prefix + n, ignore=ignore)


def read_openai(d: Path) -> tuple[ModelConfig, dict]:
    """(config, GPT params) of OpenAI's TensorFlow release directory."""
    cfg = openai_model_config(d)
    tensors = read_tf_checkpoint(tf_prefix(d))
    return cfg, _to_params(cfg, tensors, d, _tf_name, lambda n, s: (1, *s) if _is_conv(n) else s)


def hf_config_dict(cfg: ModelConfig) -> dict:
    """A transformers GPT2Config dict for this model."""
    d = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
         "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
         "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": cfg.dropout,
         "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "layer_norm_epsilon": cfg.layer_norm_eps,
         "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True,
         "tie_word_embeddings": True, "torch_dtype": cfg.param_dtype}
    if cfg.vocab_size > 50256:
        d.update(bos_token_id=50256, eos_token_id=50256)
    return d


def save_hf(cfg: ModelConfig, params, out_dir: str | Path, tokenizer_meta: dict | None = None,
            overwrite: bool = False) -> Path:
    """Write a Hugging Face directory (config.json and the weights, sharded past 5 GB) that
    `transformers.GPT2LMHeadModel.from_pretrained` loads. Without q/k/v biases, zeros are written."""
    tensors = {}
    for name, (path, shape) in name_table(dataclasses.replace(cfg, qkv_bias=True)).items():
        node = params
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        tensors["transformer." + name] = np.zeros(shape, cfg.param_dtype) if node is None else np.asarray(node)
    with staged_dir(out_dir, overwrite) as tmp:
        write_hf_weights(tmp, tensors)
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(cfg), indent=2) + "\n")
        if tokenizer_meta is not None:
            (tmp / TOKENIZER_COPY).write_text(json.dumps(tokenizer_meta))
            if tokenizer_meta.get("kind") == "bpe":  # a trained BPE in the tokenizers format HF reads
                (tmp / "tokenizer.json").write_text(tokenizer_meta["tokenizer"], encoding="utf-8")
            if tokenizer_meta.get("kind") == "gpt2":
                for name, data in gpt2_files().items():  # vocab.json and merges.txt for HF's tokenizer
                    (tmp / name).write_bytes(data)
    return Path(out_dir)


def save_jaxgpt(cfg: ModelConfig, params, out_dir: str | Path, tokenizer_meta: dict | None,
                source: str, overwrite: bool = False) -> Path:
    """Write a jaxgpt model directory (step 0) that `jaxgpt sample` and `train.init_from` read."""
    data = DataConfig(tokenizer=tokenizer_meta["kind"]) if tokenizer_meta else DataConfig()
    with staged_dir(out_dir, overwrite) as tmp:
        checkpoint.save_model(tmp, Config(model=cfg, data=data), params, tokenizer_meta, {"converted_from": source})
    return Path(out_dir)


