"""Typed, frozen run configuration: model, data and training settings, presets and overrides.

A run is described by one `Config` (a `ModelConfig`, a `DataConfig`, a `TrainConfig`, a `MeshConfig` and a
`DistConfig`); recipe files and command-line overrides build one (recipe.py). `validate` rejects impossible
values before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from jaxgpt.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")
ATTENTION = ("auto", "xla", "recompute", "cudnn", "pallas")
SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw", "muon")
REMAT = ("none", "full", "dots")
SEED_LIMIT = 2**63  # seeds are 0 .. SEED_LIMIT - 1: what jax.random.key and numpy's generators both take


@dataclass(frozen=True)
class ModelConfig:
    """GPT-2 shape and numerics. Defaults are GPT-2 small (124M)."""

    vocab_size: int = 50257  # tokens in the vocabulary (set from the tokenizer, or the pretrained model)
    block_size: int = 1024  # longest context; size of the learned position table
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # on embeddings, attention weights and residual branches while training
    qkv_bias: bool = True  # GPT-2 has biases on q, k, v; the book also trains without them
    layer_norm_eps: float = 1e-5  # GPT-2's value; Flax's default (1e-6) would shift every logit
    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of the weights
    # The modern decoder options (Llama, Qwen3, ...); each is independent of the others, and the defaults are GPT-2.
    position: str = "learned"  # "learned": a table of block_size positions (GPT-2); "rope": rotary, any length
    rope_theta: float = 10000.0  # RoPE's base wavelength (Llama 3: 500000, Qwen3: 1000000)
    rope_scaling: str = "none"  # "none"; "linear": positions divided by rope_factor; "llama3": Llama 3.1's bands
    rope_factor: float = 1.0  # linear and llama3: how many times longer than rope_context the positions reach
    rope_low_freq_factor: float = 1.0  # llama3: wavelengths above rope_context / this are divided by rope_factor
    rope_high_freq_factor: float = 4.0  # llama3: wavelengths below rope_context / this are kept; between, blended
    rope_context: int = 0  # llama3: the context it trained at (original_max_position_embeddings); 0: block_size
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm"; layer_norm_eps is either one's epsilon
    mlp: str = "gelu"  # "gelu" (GPT-2's tanh GELU), "swiglu" (a SiLU-gated unit, Llama/Qwen) or "relu2" (squared ReLU)
    n_inner: int = 0  # the MLP's hidden width; 0: 4 * n_embd
    n_kv_head: int = 0  # key/value heads, each shared by n_head / n_kv_head query heads (GQA; 1: MQA); 0: n_head
    head_size: int = 0  # width of one head; 0: n_embd // n_head
    qk_norm: bool = False  # RMSNorm on each query and key head before attention (Qwen3)
    bias: bool = True  # biases on the attention output, the MLP and the norms (q, k, v: qkv_bias)
    tie_embeddings: bool = True  # the output head is the token embedding (GPT-2); false: its own lm_head
    attention: str = "auto"  # "auto": Pallas's flash attention on a TPU (block_size a multiple of 128), cuDNN's fused attention where it compiles (GPU, 16-bit dtype), else XLA's ("recompute" on an accelerator, "xla" on a CPU); "xla"; "recompute" (keeps q, k, v instead of the weights); "cudnn"; "pallas"
    remat: str = "none"  # recompute in the backward pass, per block: "none", "full", or "dots" (keeps matmul outputs)

    @staticmethod
    def preset(name: str, **overrides: Any) -> ModelConfig:
        """One of OpenAI's four GPT-2 sizes, or a Qwen3 or Llama 3.2, optionally with some fields changed."""
        if name not in PRESETS:
            raise UserError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_width(self) -> int:
        return self.n_inner or 4 * self.n_embd


# What a set of weights is and computes, as distinct from how a run uses it (block_size, dropout, dtypes,
# kernels): a pretrained model fixes these for everything that starts from it.
ARCHITECTURE = ("vocab_size", "n_layer", "n_head", "n_embd", "qkv_bias", "layer_norm_eps", "position", "rope_theta",
                "rope_scaling", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_context", "norm",
                "mlp", "n_inner", "n_kv_head", "head_size", "qk_norm", "bias", "tie_embeddings")
POSITIONS = ("learned", "rope")
ROPE_SCALING = ("none", "linear", "llama3")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu", "relu2")

PRESETS: dict[str, ModelConfig] = {
    "gpt2": ModelConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": ModelConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": ModelConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": ModelConfig(n_layer=48, n_head=25, n_embd=1600),
}
# Qwen3 and Llama 3.2 as their published config.json files describe them (tests/test_presets.py checks the
# parameter counts against the published ones).
_MODERN = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=False)
_QWEN3 = dict(_MODERN, vocab_size=151936, block_size=40960, n_kv_head=8, head_size=128, qk_norm=True,
              rope_theta=1e6, layer_norm_eps=1e-6)
_LLAMA32 = dict(_MODERN, vocab_size=128256, block_size=131072, n_kv_head=8, rope_theta=5e5, rope_scaling="llama3",
                rope_factor=32.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_context=8192,
                layer_norm_eps=1e-5)
PRESETS.update({
    "qwen3-0.6b": ModelConfig(**_QWEN3, n_layer=28, n_head=16, n_embd=1024, n_inner=3072),
    "qwen3-1.7b": ModelConfig(**_QWEN3, n_layer=28, n_head=16, n_embd=2048, n_inner=6144),
    "qwen3-4b": ModelConfig(**_QWEN3, n_layer=36, n_head=32, n_embd=2560, n_inner=9728),
    "qwen3-8b": ModelConfig(**_QWEN3, n_layer=36, n_head=32, n_embd=4096, n_inner=12288, tie_embeddings=False),
    "llama-3.2-1b": ModelConfig(**_LLAMA32, n_layer=16, n_head=32, n_embd=2048, n_inner=8192),
    "llama-3.2-3b": ModelConfig(**_LLAMA32, n_layer=28, n_head=24, n_embd=3072, n_inner=8192, head_size=128),
})


@dataclass(frozen=True)
class DataConfig:
    source: str = "shakespeare"  # "shakespeare" (embedded), a text file, or a folder of .txt files
    tokenizer: str = "char"  # "char", "gpt2", "simple", or a folder from `jaxgpt tokenizer train`
    val_fraction: float = 0.1  # of every document (its end) held out for validation
    cache_dir: str = "data"  # prepared token files are kept here and reused


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "out/run"  # the run directory: checkpoints, metrics, plots, samples
    seed: int = 1337  # initialisation, batches and dropout all follow from it
    batch_size: int = 32  # sequences per optimizer step, summed over devices and accumulation
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_accum_unroll: int = 1  # micro-batches per pass of the accumulation loop: on a CPU, 2 run at once
    max_steps: int = 2000  # optimizer steps to train to (may be raised when resuming)
    optimizer: str = "adamw"  # "adamw"; "muon": Muon (optax.contrib) for the blocks' matrices, AdamW for the rest
    learning_rate: float = 1e-3  # the peak, after the warmup
    lr_schedule: str = "cosine"  # "cosine": warmup, then cosine decay to min_lr; "constant": warmup, then learning_rate
    min_lr: float = 1e-4  # where the cosine decay ends
    warmup_steps: int = 100  # linear warmup from 0
    decay_steps: int = 0  # cosine decay length; 0 means max_steps
    weight_decay: float = 0.1  # AdamW's, on weight matrices and embeddings only
    beta1: float = 0.9  # Adam's first-moment decay
    beta2: float = 0.99  # Adam's second-moment decay
    grad_clip: float = 1.0  # global-norm clipping; 0 turns it off
    log_interval: int = 10  # steps between progress lines and metrics.jsonl records
    eval_interval: int = 250  # also the checkpoint interval
    eval_steps: int = 20  # validation batches per evaluation
    sample_interval: int = 500  # 0 turns periodic samples off
    sample_tokens: int = 200  # length of each sample
    sample_prompt: str = "\n"  # what samples continue (escapes such as \n work)
    keep_checkpoints: int = 2  # latest N kept, plus the best by validation loss
    progress: bool = True  # one updating progress line on a terminal
    init_from: str = ""  # start from pretrained weights: a jaxgpt, Hugging Face or OpenAI GPT-2 directory
    skip_nonfinite: bool = False  # skip (and count) updates with a NaN/inf loss or gradient instead of stopping
    hellaswag: str = ""  # a HellaSwag JSONL file: its accuracy at every evaluation (metrics.jsonl, hellaswag.png)
    hellaswag_limit: int = 0  # only its first N examples (0: all)
    tensorboard: bool = False  # also write TensorBoard event files into <out_dir>/tensorboard (needs jaxgpt[tensorboard])
    profile_steps: str = ""  # "A:B": record a jax.profiler trace of steps A to B into <out_dir>/profile
    compile_cache: str = "auto"  # JAX's persistent compilation cache: "auto" (the user cache folder), a folder, or "" (off)


MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = ("vocab", "embed", "heads", "mlp")


@dataclass(frozen=True)
class MeshConfig:
    """How the devices are arranged and what is split across them (see jaxgpt/train/sharding.py). The axis
    sizes multiply to the device count; batches are split over data x fsdp."""

    data: int = -1  # data-parallel groups (replicated weights); -1: the devices the other axes leave
    fsdp: int = 1  # weights, gradients and optimizer state sharded over this many devices (ZeRO-3 / FSDP)
    tensor: int = 1  # each layer's matmuls split over this many devices (tensor parallelism)
    rules: str = "vocab=tensor,embed=fsdp,heads=tensor,mlp=tensor"  # logical weight axis -> mesh axis


@dataclass(frozen=True)
class DistConfig:
    """Several processes (hosts, or processes on one host) joined by jax.distributed into one run."""

    coordinator: str = ""  # host:port of process 0; "" reads JAX_COORDINATOR_ADDRESS (unset: one process)
    num_processes: int = 0  # 0 reads JAX_NUM_PROCESSES
    process_id: int = -1  # -1 reads JAX_PROCESS_ID
    auto: bool = False  # let JAX find all three itself (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes)
    timeout_s: int = 300  # how long to wait for the coordinator and the other processes


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Config:
        """Rebuild a config written by `to_dict` (e.g. a run's config.json); unknown keys are errors."""
        try:
            parts = {k: SECTIONS[k](**v) for k, v in d.items()}
        except (KeyError, TypeError) as e:
            raise UserError(f"config JSON does not match this version of jaxgpt ({e})") from None
        return Config(**parts)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "mesh": MeshConfig,
             "dist": DistConfig}

# Settings a resumed run may change: they alter how long it runs and what it reports, not what it learns.
RESUMABLE_KEYS = frozenset(
    {"train.max_steps", "train.log_interval", "train.eval_interval", "train.eval_steps",
     "train.sample_interval", "train.sample_tokens", "train.sample_prompt", "train.keep_checkpoints",
     "train.progress", "train.out_dir", "data.cache_dir", "train.skip_nonfinite", "train.hellaswag",
     "train.hellaswag_limit", "train.tensorboard", "train.profile_steps", "train.compile_cache"}
    # How the same computation is carried out is not what it learns either.
    | {"model.attention", "model.remat", "train.grad_accum_unroll"}
    # Where the work runs is not what it learns: a checkpoint restores onto any mesh and process count.
    | {f"mesh.{f.name}" for f in dataclasses.fields(MeshConfig)}
    | {f"dist.{f.name}" for f in dataclasses.fields(DistConfig)}
)


def flatten(cfg: Config) -> dict[str, Any]:
    """{"model.n_layer": 12, ...} for every leaf field."""
    return {f"{s}.{k}": v for s, sec in cfg.to_dict().items() for k, v in sec.items()}


_ARTICLE = {int: "an int", float: "a number", str: "a string", bool: "true or false"}


def _check_types(cfg: Config) -> None:
    """Each field holds its declared type (a recipe file is Python, so anything can be written there), and
    every float is finite: a NaN would slip through every range check below."""
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            value, tp = getattr(getattr(cfg, section), f.name), hints[f.name]
            ok = {int: isinstance(value, int) and not isinstance(value, bool),
                  float: isinstance(value, (int, float)) and not isinstance(value, bool),
                  str: isinstance(value, str), bool: isinstance(value, bool)}.get(tp, True)
            if not ok:
                raise UserError(f"{section}.{f.name} must be {_ARTICLE[tp]}, got {value!r} "
                                f"({type(value).__name__}); fix the recipe or pass --{section}.{f.name}=...")
            if tp is float and not math.isfinite(value):
                raise UserError(f"{section}.{f.name} must be a finite number, got {value}")


def validate(cfg: Config) -> Config:
    """Raise a UserError naming the first impossible setting; return cfg unchanged otherwise."""
    _check_types(cfg)
    m, d, t = cfg.model, cfg.data, cfg.train
    positive = {
        "model.vocab_size": m.vocab_size, "model.block_size": m.block_size, "model.n_layer": m.n_layer,
        "model.n_head": m.n_head, "model.n_embd": m.n_embd, "train.batch_size": t.batch_size,
        "train.grad_accum": t.grad_accum, "train.grad_accum_unroll": t.grad_accum_unroll,
        "train.max_steps": t.max_steps, "train.learning_rate": t.learning_rate, "train.log_interval": t.log_interval,
        "train.eval_interval": t.eval_interval, "train.eval_steps": t.eval_steps,
        "train.keep_checkpoints": t.keep_checkpoints, "model.layer_norm_eps": m.layer_norm_eps,
    }
    for key, value in positive.items():
        if not value > 0:
            raise UserError(f"{key} must be positive, got {value}")
    non_negative = {
        "train.min_lr": t.min_lr, "train.warmup_steps": t.warmup_steps, "train.decay_steps": t.decay_steps,
        "train.weight_decay": t.weight_decay, "train.grad_clip": t.grad_clip,
        "train.sample_interval": t.sample_interval, "train.sample_tokens": t.sample_tokens,
        "train.hellaswag_limit": t.hellaswag_limit,
    }
    for key, value in non_negative.items():
        if not value >= 0:
            raise UserError(f"{key} must not be negative, got {value}")
    if m.block_size < 2:
        raise UserError(f"model.block_size must be at least 2 (one token to read, one to predict), got {m.block_size}")
    check_seed("train.seed", t.seed)
    _validate_model(m)
    if not 0 <= m.dropout < 1:
        raise UserError(f"model.dropout must be in [0, 1), got {m.dropout}")
    for key, value, allowed in (("model.dtype", m.dtype, DTYPES), ("model.param_dtype", m.param_dtype, DTYPES),
                                ("model.attention", m.attention, ATTENTION), ("model.remat", m.remat, REMAT),
                                ("model.position", m.position, POSITIONS), ("model.norm", m.norm, NORMS),
                                ("model.rope_scaling", m.rope_scaling, ROPE_SCALING), ("model.mlp", m.mlp, MLPS),
                                ("train.lr_schedule", t.lr_schedule, SCHEDULES),
                                ("train.optimizer", t.optimizer, OPTIMIZERS)):
        if value not in allowed:
            raise UserError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    if not 0 < d.val_fraction < 1:
        raise UserError(f"data.val_fraction must be between 0 and 1, got {d.val_fraction}")
    for key, value in (("train.beta1", t.beta1), ("train.beta2", t.beta2)):
        if not 0 <= value < 1:
            raise UserError(f"{key} must be in [0, 1), got {value}")
    if t.batch_size % t.grad_accum:
        raise UserError(f"train.batch_size ({t.batch_size}) must be divisible by train.grad_accum ({t.grad_accum})")
    _validate_mesh(cfg.mesh, cfg.dist)
    parse_steps(t.profile_steps)
    return cfg


def _validate_model(m: ModelConfig) -> None:
    """The shape rules of the attention heads, the MLP and the rotary positions."""
    for key, value in (("model.n_kv_head", m.n_kv_head), ("model.head_size", m.head_size), ("model.n_inner", m.n_inner),
                       ("model.rope_context", m.rope_context)):
        if value < 0:
            raise UserError(f"{key} must be positive, or 0 for its default, got {value}")
    if not m.head_size and m.n_embd % m.n_head:
        raise UserError(f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head}), or set "
                        "model.head_size")
    if m.n_head % m.kv_heads:
        raise UserError(f"model.n_head ({m.n_head}) must be a multiple of model.n_kv_head ({m.kv_heads})")
    if m.position == "rope":
        if m.head_dim % 2:
            raise UserError(f"rotary positions turn pairs of a head's dimensions: the head size ({m.head_dim}) must be "
                            "even; change model.head_size or model.n_head")
        if not m.rope_theta > 0 or not m.rope_factor >= 1:
            raise UserError(f"model.rope_theta must be positive and model.rope_factor at least 1, got {m.rope_theta} "
                            f"and {m.rope_factor}")
        if m.rope_scaling == "llama3" and not 0 < m.rope_low_freq_factor < m.rope_high_freq_factor:
            raise UserError("model.rope_low_freq_factor must be positive and below model.rope_high_freq_factor, got "
                            f"{m.rope_low_freq_factor} and {m.rope_high_freq_factor}")
    elif m.rope_scaling != "none":
        raise UserError(f"model.rope_scaling={m.rope_scaling} scales rotary positions; set model.position=rope")


def check_seed(name: str, seed: int) -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{name} must be a whole number from 0 to 2**63 - 1, got {seed}")


def parse_rules(text: str) -> dict[str, str | None]:
    """'vocab=tensor,embed=fsdp' -> {"vocab": "tensor", "embed": "fsdp"}; 'none' keeps an axis whole."""
    rules: dict[str, str | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, axis = (s.strip() for s in item.partition("="))
        if not sep or name not in LOGICAL_AXES or axis not in (*MESH_AXES, "none"):
            raise UserError(f"mesh.rules entry {item!r} must be LOGICAL=MESH with LOGICAL one of "
                            f"{', '.join(LOGICAL_AXES)} and MESH one of {', '.join(MESH_AXES)} or none, "
                            "e.g. --mesh.rules=embed=fsdp,mlp=tensor")
        rules[name] = None if axis == "none" else axis
    return rules


def _validate_mesh(m: MeshConfig, d: DistConfig) -> None:
    sizes = {f"mesh.{a}": getattr(m, a) for a in MESH_AXES}
    for key, value in sizes.items():
        if value != -1 and value < 1:
            raise UserError(f"{key} must be a positive number of devices or -1 (the rest), got {value}")
    if list(sizes.values()).count(-1) > 1:
        raise UserError("only one of mesh.data, mesh.fsdp and mesh.tensor may be -1 (the devices left over)")
    parse_rules(m.rules)
    if d.timeout_s < 1:
        raise UserError(f"dist.timeout_s must be at least 1 second, got {d.timeout_s}")
    if d.num_processes < 0 or d.process_id < -1:
        raise UserError("dist.num_processes must be >= 0 and dist.process_id >= 0 (or -1 to read the environment)")


def diff(old: Config, new: Config) -> list[str]:
    """Keys whose values differ between two configs, as 'key: old -> new'."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]


def parse_steps(text: str) -> tuple[int, int] | None:
    """"A:B" -> (A, B) with 1 <= A <= B; "" -> None; anything else is one line."""
    if not text:
        return None
    a, sep, b = text.partition(":")
    if not (sep and a.strip().isdigit() and b.strip().isdigit() and 1 <= int(a) <= int(b)):
        raise UserError(f"train.profile_steps {text!r} must be A:B, the first and last step to trace (1 <= A <= B), "
                        "e.g. --train.profile_steps=10:15")
    return int(a), int(b)
