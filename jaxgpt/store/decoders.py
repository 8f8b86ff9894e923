"""Hugging Face Llama (3.x) and Qwen3 directories in and out: the modern decoders on jaxgpt's GPT.

Both families are a GPT with the modern options (`ModelConfig`): rotary positions, RMSNorm, a SwiGLU MLP,
grouped-query attention, no biases; Qwen3 adds QK-norm. Their tensors map onto jaxgpt's tree thus (HF's
`nn.Linear` weights are (out, in), Flax kernels (in, out), so every projection is transposed):

    model.embed_tokens.weight (V, C)                    -> wte.embedding
    model.layers.i.input_layernorm.weight               -> h_i.ln_1.scale
    model.layers.i.self_attn.{q,k,v}_proj.weight        -> h_i.attn.c_attn.kernel (C, (H + 2KV) D): q | k | v
    model.layers.i.self_attn.{q,k}_norm.weight (D,)     -> h_i.attn.{q,k}_norm.scale            (Qwen3)
    model.layers.i.self_attn.o_proj.weight (C, H D)     -> h_i.attn.c_proj.kernel
    model.layers.i.post_attention_layernorm.weight      -> h_i.ln_2.scale
    model.layers.i.mlp.{gate,up}_proj.weight (I, C)     -> h_i.mlp.c_fc.kernel (C, 2I): gate | up
    model.layers.i.mlp.down_proj.weight (C, I)          -> h_i.mlp.c_proj.kernel
    model.norm.weight                                   -> ln_f.scale
    lm_head.weight (V, C)                               -> lm_head.embedding (untied heads only)

Biases (`attention_bias`, `mlp_bias`) follow the same concatenations. Directories are read as convert.py
reads GPT-2's (one safetensors file or shards with an index); they are written as one file, or as shards
of at most `max_shard_bytes` with an index, with the tokenizer files beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgpt.config import Config, ModelConfig, validate
from jaxgpt.errors import UserError
from jaxgpt.files import read_json_object, staged_dir
from jaxgpt.store import convert

FAMILIES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}  # model_type -> transformers class
_LAYER = "model.layers.{i}."


def is_decoder_config(d: dict) -> bool:
    return d.get("model_type") in FAMILIES


def _rope(d: dict, path: Path) -> dict:
    """The ModelConfig rope fields of a config dict: transformers 5's `rope_parameters` or the older
    top-level `rope_theta` with `rope_scaling`."""
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    fields = {"rope_theta": float(theta)}
    if kind == "llama3":
        fields.update(rope_scaling="llama3", rope_factor=float(params["factor"]),
                      rope_low_freq_factor=float(params["low_freq_factor"]),
                      rope_high_freq_factor=float(params["high_freq_factor"]),
                      rope_context=int(params["original_max_position_embeddings"]))
    elif kind == "linear":
        fields.update(rope_scaling="linear", rope_factor=float(params["factor"]))
    elif kind != "default":
        raise UserError(f"{path} scales rotary positions with {kind!r}; jaxgpt implements 'llama3' and 'linear'")
    return fields


def model_config(path: Path) -> ModelConfig:
    """The ModelConfig of a Llama or Qwen3 `config.json`, or one line naming what jaxgpt does not implement."""
    d = read_json_object(path, "download it again")
    family = d.get("model_type")
    if d.get("hidden_act", "silu") != "silu":
        raise UserError(f"{path} sets hidden_act={d['hidden_act']!r}; jaxgpt's gated MLP is SiLU's (SwiGLU)")
    if d.get("use_sliding_window") or d.get("attention_chunk_size"):
        raise UserError(f"{path} uses sliding-window or chunked attention, which jaxgpt does not implement")
    bias = bool(d.get("attention_bias", False))
    if family == "llama" and bool(d.get("mlp_bias", False)) != bias:
        raise UserError(f"{path} has attention_bias={bias} but mlp_bias={d.get('mlp_bias')}; jaxgpt's "
                        "model.bias covers both, so they must agree")
    try:
        n_embd, n_head = int(d["hidden_size"]), int(d["num_attention_heads"])
        kv, head = int(d.get("num_key_value_heads") or n_head), int(d.get("head_dim") or n_embd // n_head)
        cfg = ModelConfig(
            vocab_size=int(d["vocab_size"]), block_size=int(d["max_position_embeddings"]),
            n_layer=int(d["num_hidden_layers"]), n_head=n_head, n_embd=n_embd,
            n_kv_head=0 if kv == n_head else kv, head_size=0 if head * n_head == n_embd else head,  # 0: the default
            n_inner=int(d["intermediate_size"]),
            layer_norm_eps=float(d.get("rms_norm_eps", 1e-6)), position="rope", norm="rmsnorm", mlp="swiglu",
            qk_norm=family == "qwen3", qkv_bias=bias, bias=bias,
            tie_embeddings=bool(d.get("tie_word_embeddings", False)), **_rope(d, path))
        validate(Config(model=cfg))
    except KeyError as e:
        raise UserError(f"{path} has no {e}, which a {family} config.json holds; download it again") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{path} has a malformed setting ({e}); download it again") from None
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return cfg


def family_of(cfg: ModelConfig) -> str | None:
    """'llama' or 'qwen3' when a Hugging Face class computes exactly this model, else None."""
    modern = (cfg.position == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu"
              and cfg.qkv_bias == cfg.bias and cfg.rope_scaling in ("none", "linear", "llama3"))
    if not modern:
        return None
    return "qwen3" if cfg.qk_norm else "llama"


def tensor_table(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Hugging Face name -> jaxgpt params path of the (transposed, concatenated) tensor it is part of."""
    table = {"model.embed_tokens.weight": ("wte", "embedding"), "model.norm.weight": ("ln_f", "scale")}
    if not cfg.tie_embeddings:
        table["lm_head.weight"] = ("lm_head", "embedding")
    for i in range(cfg.n_layer):
        pre, h = _LAYER.format(i=i), f"h_{i}"
        table[pre + "input_layernorm.weight"] = (h, "ln_1", "scale")
        table[pre + "post_attention_layernorm.weight"] = (h, "ln_2", "scale")
        leaves = [("weight", "kernel")] + ([("bias", "bias")] if cfg.bias else [])
        for hf_leaf, leaf in leaves:
            for p in "qkv":
                table[f"{pre}self_attn.{p}_proj.{hf_leaf}"] = (h, "attn", "c_attn", leaf)
            table[f"{pre}self_attn.o_proj.{hf_leaf}"] = (h, "attn", "c_proj", leaf)
            for p in ("gate", "up"):
                table[f"{pre}mlp.{p}_proj.{hf_leaf}"] = (h, "mlp", "c_fc", leaf)
            table[f"{pre}mlp.down_proj.{hf_leaf}"] = (h, "mlp", "c_proj", leaf)
        if cfg.qk_norm:
            table[pre + "self_attn.q_norm.weight"] = (h, "attn", "q_norm", "scale")
            table[pre + "self_attn.k_norm.weight"] = (h, "attn", "k_norm", "scale")
    return table


_FUSED = {"self_attn": ("q_proj", "k_proj", "v_proj"), "mlp": ("gate_proj", "up_proj")}


def _fused_with(stem: str) -> list[str]:
    """The Hugging Face stems stored in one jaxgpt tensor together with `stem`, in their concatenation order
    (q | k | v, gate | up); [stem] for a tensor stored alone."""
    prefix, _, module = stem.rpartition(".")  # "model.layers.0.self_attn", "q_proj"
    group = _FUSED.get(prefix.rpartition(".")[2], ())
    return [f"{prefix}.{m}" for m in group] if module in group else [stem]


def read(d: Path) -> tuple[ModelConfig, dict]:
    """(config, GPT params as NumPy arrays in the config's param_dtype) of a Llama or Qwen3 directory."""
    cfg = model_config(d / "config.json")
    tensors = convert.hf_tensors(d)
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # some files store the tied head twice
    table = tensor_table(cfg)
    missing = sorted(set(table) - set(tensors))
    extra = sorted(k for k in set(tensors) - set(table) if not k.endswith("rotary_emb.inv_freq"))
    if missing or extra:
        name = (missing or extra)[0]
        raise UserError(f"{d} {'lacks' if missing else 'has'} tensor {name!r}, which its config.json "
                        f"{'needs' if missing else 'does not describe'}; the download is incomplete or the config "
                        "does not match the weights")
    dtype = jnp.dtype(cfg.param_dtype)
    params: dict = {}

    def put(path: tuple[str, ...], array: np.ndarray) -> None:
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.asarray(array, dtype)

    for name, path in table.items():
        stem, _, leaf = name.rpartition(".")
        stems = _fused_with(stem)
        if stem != stems[0]:
            continue  # stored with the first of its group
        parts = [tensors[f"{s}.{leaf}"] for s in stems]
        if path[-1] == "kernel":
            parts = [p.T for p in parts]  # (out, in) -> (in, out)
        put(path, np.concatenate(parts, axis=-1))  # one tensor, or q | k | v and gate | up side by side
    _check_shapes(cfg, params, d)
    return cfg, params


def _check_shapes(cfg: ModelConfig, params: dict, d: Path) -> None:
    want = convert.param_shapes(cfg)
    for path, array in traverse_util.flatten_dict(params).items():
        if tuple(array.shape) != want[path]:
            raise UserError(f"{d}: {'.'.join(path)} has shape {array.shape}, expected {want[path]} from its "
                            "config.json; the config does not match the weights")


def tensors_of(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """The Hugging Face tensors of a Llama/Qwen3-shaped GPT's params, in HF's layout (`read`'s inverse)."""
    H, KV, D, inner = cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.mlp_width
    out = {}
    for name, path in tensor_table(cfg).items():
        array = params
        for part in path:
            array = array[part]
        array = np.asarray(array)
        stem, _, leaf = name.rpartition(".")
        kind = stem.rsplit(".", 1)[-1]
        if path[-2] == "c_attn":  # q | k | v along the output axis
            bounds = {"q_proj": (0, H * D), "k_proj": (H * D, (H + KV) * D), "v_proj": ((H + KV) * D, (H + 2 * KV) * D)}
            lo, hi = bounds[kind]
            array = array[..., lo:hi]
        elif path[-2] == "c_fc":  # gate | up
            array = array[..., :inner] if kind == "gate_proj" else array[..., inner:]
        out[name] = np.ascontiguousarray(array.T if path[-1] == "kernel" else array)
    return out


def config_dict(cfg: ModelConfig, family: str, extra: dict | None = None) -> dict:
    """A transformers config.json for this model (rope settings in the form every transformers reads)."""
    scaling = None
    if cfg.rope_scaling == "llama3":
        scaling = {"rope_type": "llama3", "factor": cfg.rope_factor, "low_freq_factor": cfg.rope_low_freq_factor,
                   "high_freq_factor": cfg.rope_high_freq_factor,
                   "original_max_position_embeddings": cfg.rope_context or cfg.block_size}
    elif cfg.rope_scaling == "linear":
        scaling = {"rope_type": "linear", "factor": cfg.rope_factor}
    d = {"architectures": [FAMILIES[family]], "model_type": family, "vocab_size": cfg.vocab_size,
         "hidden_size": cfg.n_embd, "intermediate_size": cfg.mlp_width, "num_hidden_layers": cfg.n_layer,
         "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
         "hidden_act": "silu", "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.layer_norm_eps,
         "rope_theta": cfg.rope_theta, "rope_scaling": scaling, "attention_bias": cfg.bias,
         "attention_dropout": 0.0, "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": 0.02,
         "use_cache": True, "torch_dtype": cfg.param_dtype}
    if family == "llama":
        d["mlp_bias"] = cfg.bias
    else:
        d.update(use_sliding_window=False, sliding_window=None)
    return {**d, **(extra or {})}


def save(cfg: ModelConfig, params: dict, out_dir: str | Path, tokenizer_files: dict[str, str] | None = None,
         overwrite: bool = False, max_shard_bytes: int = convert.SHARD_BYTES, extra_config: dict | None = None) -> Path:
    """Write a Hugging Face directory that `transformers`' Llama/Qwen3 classes load: config.json, the weights
    (one model.safetensors, or shards with model.safetensors.index.json) and `tokenizer_files` (name -> text)."""
    family = family_of(cfg)
    if family is None:
        raise UserError("this model has no Hugging Face architecture: Llama and Qwen3 need model.position=rope, "
                        "model.norm=rmsnorm, model.mlp=swiglu and qkv_bias equal to bias; GPT-2 needs the defaults")
    with staged_dir(out_dir, overwrite) as tmp:
        convert.write_hf_weights(tmp, tensors_of(cfg, params), max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(config_dict(cfg, family, extra_config), indent=2) + "\n")
        for name, text in (tokenizer_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out_dir)
