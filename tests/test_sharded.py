"""Sharded training on 8 fake CPU devices: data parallelism, FSDP, tensor parallelism, restoring onto
another mesh, and the errors of impossible meshes.

XLA fixes the device count when JAX starts, so `test_on_eight_fake_devices` reruns this file in a child
process with XLA_FLAGS=--xla_force_host_platform_device_count=8; in the parent the other tests skip.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxgpt.config import MeshConfig
from jaxgpt.errors import UserError
from jaxgpt.model import objectives
from jaxgpt.store import checkpoint
from jaxgpt.store.loader import load, load_pretrained
from jaxgpt.train.pretrain import Trainer

ROOT = Path(__file__).resolve().parent.parent
eight = pytest.mark.skipif(jax.device_count() != 8, reason="runs in the 8-device child process")


@pytest.mark.skipif(jax.device_count() == 8 or os.environ.get("JAXGPT_SHARDED_CHILD") == "1",
                    reason="this is the child process")
def test_on_eight_fake_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAXGPT_SHARDED_CHILD": "1",
           "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    summary = res.stdout.strip().splitlines()[-1]
    assert re.match(r"\d+ passed, 1 skipped", summary), summary  # only this test skips in the child


def _cfg(cfg, mesh=None, **train):
    train = {"max_steps": 20, "log_interval": 1, "eval_interval": 20, "eval_steps": 1, **train}
    return dataclasses.replace(cfg, mesh=mesh or MeshConfig(), train=dataclasses.replace(cfg.train, **train))


def _losses(run_dir) -> dict[int, float]:
    records = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """The reference: losses of 20 steps of the tiny config on a single device."""
    from conftest import TINY_MODEL, write_corpus

    from jaxgpt.config import Config, DataConfig, TrainConfig

    tmp = tmp_path_factory.mktemp("ref")
    cfg = Config(model=TINY_MODEL, data=DataConfig(source=write_corpus(tmp / "corpus.txt"), tokenizer="char",
                                                   cache_dir=str(tmp / "data")),
                 train=TrainConfig(out_dir=str(tmp / "run"), batch_size=8, learning_rate=3e-3, warmup_steps=5,
                                   decay_steps=20, sample_interval=0, sample_tokens=8, progress=False))
    Trainer(_cfg(cfg), devices=jax.devices()[:1]).run()
    return cfg, _losses(tmp / "run")


@eight
@pytest.mark.parametrize("mesh", [MeshConfig(data=8), MeshConfig(data=1, fsdp=8), MeshConfig(data=2, fsdp=4),
                                  MeshConfig(data=2, fsdp=2, tensor=2)], ids=str)
def test_losses_match_one_device_and_weights_are_sharded(one_device, mesh, tmp_path):
    base, ref = one_device
    cfg = _cfg(base, mesh, out_dir=str(tmp_path / "run"))
    trainer = Trainer(cfg)
    state, _ = trainer.engine.start()
    kernel = state.params["h_0"]["mlp"]["c_fc"]["kernel"]  # (C, 4C): embed -> fsdp, mlp -> tensor
    C = cfg.model.n_embd
    expect = P("fsdp" if mesh.fsdp > 1 else None, "tensor" if mesh.tensor > 1 else None)
    assert kernel.sharding.spec == expect
    assert kernel.addressable_shards[0].data.shape == (C // mesh.fsdp, 4 * C // mesh.tensor)
    mu = state.opt_state[1][0].mu["h_0"]["mlp"]["c_fc"]["kernel"]  # Adam's first moment: laid out alike
    assert mu.sharding.spec == expect
    del state

    trainer.run()
    got = _losses(tmp_path / "run")
    assert got.keys() == ref.keys() and len(got) == 20
    np.testing.assert_allclose([got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)], atol=1e-5, rtol=0)


@eight
def test_checkpoint_restores_onto_other_meshes(one_device, tmp_path):
    """Saved with FSDP over 4 devices, resumed on 2 (and restored on 1 and 8): same weights, and the
    resumed steps give the single-device reference's losses."""
    base, ref = one_device
    run = tmp_path / "run"
    Trainer(_cfg(base, MeshConfig(data=1, fsdp=4), out_dir=str(run), max_steps=10, eval_interval=10),
            devices=jax.devices()[:4]).run()
    saved = None
    for devices, mesh in ((4, MeshConfig(data=1, fsdp=4)), (1, MeshConfig()), (8, MeshConfig(data=2, fsdp=2, tensor=2)),
                          (2, MeshConfig(data=1, fsdp=2))):
        trainer = Trainer(_cfg(base, mesh, out_dir=str(run)), devices=jax.devices()[:devices])
        ckpt = checkpoint.Checkpointer(run, keep=2)
        state, _ = ckpt.restore(trainer.engine.abstract_state, 10)
        ckpt.close()
        kernel = state.params["h_1"]["attn"]["c_attn"]["kernel"]
        assert len(kernel.sharding.device_set) == devices
        assert kernel.sharding == trainer.engine.state_sharding.params["h_1"]["attn"]["c_attn"]["kernel"]
        values = jax.tree.map(np.asarray, state)
        if saved is None:
            saved = values
        else:
            jax.tree.map(np.testing.assert_array_equal, values, saved)
    params = load(run, 10).params  # what `jaxgpt sample` reads: one device
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), saved.params)
    trainer.run()  # the last one, on 2 devices, resumes at step 10 and trains to 20
    got = _losses(run)
    np.testing.assert_allclose([got[s] for s in range(1, 21)], [ref[s] for s in range(1, 21)], atol=1e-5, rtol=0)


@eight
def test_one_device_checkpoint_restores_sharded(one_device, tmp_path):
    base, _ = one_device
    run = tmp_path / "run"
    Trainer(_cfg(base, out_dir=str(run), max_steps=2, eval_interval=2), devices=jax.devices()[:1]).run()
    trainer = Trainer(_cfg(base, MeshConfig(data=1, fsdp=8), out_dir=str(run)))
    ckpt = checkpoint.Checkpointer(run, keep=2)
    state, _ = ckpt.restore(trainer.engine.abstract_state, 2)
    ckpt.close()
    wte = state.params["wte"]["embedding"]  # (V, C): C over fsdp
    assert wte.sharding.spec == P(None, "fsdp") and len(wte.addressable_shards) == 8


@eight
@pytest.mark.parametrize("mesh, batch, message", [
    (MeshConfig(data=3), 8, "has 3 devices but there are 8"),
    (MeshConfig(data=-1, fsdp=3), 8, "need a multiple of 3 devices"),
    (MeshConfig(data=2, fsdp=2, tensor=4), 8, "has 16 devices but there are 8"),
    (MeshConfig(data=8), 12, "divisible by the 8 batch shards"),
])
def test_impossible_meshes_are_refused(one_device, mesh, batch, message, tmp_path):
    base, _ = one_device
    with pytest.raises(UserError, match=message):
        Trainer(_cfg(base, mesh, out_dir=str(tmp_path / "run"), batch_size=batch))


@eight
def test_pretrained_weights_land_sharded(one_device, tmp_path):
    """train.init_from on an FSDP mesh: the weights arrive split over the devices, values unchanged."""
    base, _ = one_device
    src = base.train.out_dir  # the reference run
    trainer = Trainer(_cfg(base, MeshConfig(data=2, fsdp=4), out_dir=str(tmp_path / "run"), init_from=src))
    state, _ = trainer.engine.start(trainer.pretrained())
    kernel = state.params["h_0"]["attn"]["c_proj"]["kernel"]  # (C, C): heads, embed -> (none, fsdp)
    assert kernel.sharding.spec == P(None, "fsdp") and len(kernel.addressable_shards) == 8
    _, params = load_pretrained(src)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), params)


@eight
def test_gpt2_xl_state_is_split_eight_ways():
    """Laid out from shapes alone (nothing allocated): with FSDP over 8 devices, each holds about an
    eighth of gpt2-xl's weights and Adam moments, never the whole 1.5B-parameter state."""
    from jaxgpt.config import Config, ModelConfig
    from jaxgpt.model.gpt import GPT
    from jaxgpt.train.engine import Engine

    xl = ModelConfig.preset("gpt2-xl")
    engine = Engine(Config(model=xl, mesh=MeshConfig(data=1, fsdp=8)), GPT(xl), objectives.language_model(GPT(xl)))
    abstract = engine.abstract_state
    total = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(abstract))
    per_device = sum(np.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(abstract))
    assert total > 17e9  # 1.56B parameters x (weights + two moments) x 4 bytes
    assert per_device < total / 8 * 1.01


# --- finetunes on the same engine -------------------------------------------------------------------

@pytest.fixture(scope="module")
def bpe_base(tmp_path_factory):
    """A tiny GPT with GPT-2's vocabulary, and Alpaca data that fits its context."""
    from conftest import save_bpe_model

    root = tmp_path_factory.mktemp("bpe")
    save_bpe_model(root / "model")
    data = [{"instruction": "Say the word.", "input": w, "output": w} for w in ["cat", "dog", "sun", "sea"] * 12]
    (root / "data.json").write_text(json.dumps(data))
    return root


def _finetune(root, out, mesh, devices, **settings):
    from jaxgpt.finetune import instruct

    cfg = instruct.InstructConfig.of(init_from=str(root / "model"), data=str(root / "data.json"), out_dir=str(out),
                                  epochs=1, batch_size=8, learning_rate=3e-3, max_new_tokens=2, log_interval=1,
                                  progress=False, mesh=mesh, **settings)
    instruct.finetune(cfg, devices=devices)
    return _losses(out)


@eight
@pytest.mark.parametrize("trainable", ["all", "lora"])
def test_a_finetune_under_fsdp_gives_the_single_device_losses(bpe_base, tmp_path, trainable):
    one = _finetune(bpe_base, tmp_path / "one", MeshConfig(), jax.devices()[:1], trainable=trainable)
    eight_ = _finetune(bpe_base, tmp_path / "eight", MeshConfig(data=1, fsdp=8), None, trainable=trainable)
    assert one.keys() == eight_.keys() and len(one) == 5  # 40 training examples, batches of 8
    np.testing.assert_allclose([eight_[s] for s in sorted(one)], [one[s] for s in sorted(one)], atol=1e-5, rtol=0)


@eight
def test_finetune_weights_and_lora_adapters_are_split_like_their_base(bpe_base):
    """A LoRA classifier on a data=1 x fsdp=4 x tensor=2 mesh: the frozen kernels are split, and each
    adapter follows its kernel (a: the kernel's input axis, b: its output axis)."""
    from jaxgpt.config import Config, TrainConfig
    from jaxgpt.finetune import classify, common
    from jaxgpt.model.gpt import GPTClassifier
    from jaxgpt.store.loader import load_pretrained
    from jaxgpt.train.engine import Engine

    model_cfg, gpt = load_pretrained(bpe_base / "model")
    ft = classify.ClassifyConfig.of(trainable="lora", lora_rank=4)
    model = GPTClassifier(model_cfg, 2)
    run = Config(model=model_cfg, train=TrainConfig(batch_size=8), mesh=MeshConfig(data=1, fsdp=4, tensor=2))
    engine = Engine(run, model, objectives.classifier(model, common.parts(ft).lora), common.parts(ft))
    state, frozen = engine.start({"gpt": gpt})
    C = model_cfg.n_embd
    kernel = frozen["gpt"]["h_0"]["mlp"]["c_fc"]["kernel"]  # (C, 4C): embed -> fsdp, mlp -> tensor
    assert kernel.sharding.spec == P("fsdp", "tensor") and kernel.addressable_shards[0].data.shape == (C // 4, 2 * C)
    adapter = state.params["lora"]["gpt"]["h_0"]["mlp"]["c_fc"]
    assert adapter["a"].sharding.spec == P("fsdp", None) and adapter["a"].addressable_shards[0].data.shape == (C // 4, 4)
    assert adapter["b"].sharding.spec == P(None, "tensor") and adapter["b"].addressable_shards[0].data.shape == (4, 2 * C)
    proj = state.params["lora"]["gpt"]["h_1"]["attn"]["c_proj"]  # (C, C): heads -> tensor, embed -> fsdp
    assert proj["a"].sharding.spec == P("tensor", None) and proj["b"].sharding.spec == P(None, "fsdp")
    mu = state.opt_state[1][0].mu["lora"]["gpt"]["h_0"]["mlp"]["c_fc"]["b"]  # Adam's moments alike
    assert mu.sharding.spec == P(None, "tensor")


# --- the modern decoder options under FSDP ------------------------------------------------------------

OPTIONS = {  # every option at least once: a Llama/Qwen-like model with all of them, and the two alternatives
    "llama3_rope-rmsnorm-no_bias-swiglu-head_size-gqa-qk_norm-untied": dict(
        position="rope", rope_scaling="llama3", rope_factor=4.0, norm="rmsnorm", bias=False, qkv_bias=False,
        mlp="swiglu", head_size=12, n_kv_head=2, qk_norm=True, tie_embeddings=False),
    "relu2-mqa": dict(mlp="relu2", n_kv_head=1),
}


@eight
@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_decoder_option_trains_one_step_under_fsdp_as_on_one_device(name):
    """Two optimizer steps with FSDP over 8 devices give the single device's losses and gradient norms (the
    second loss reads the updated weights); the new weights are laid out by their declared axes."""
    from jaxgpt.config import Config, ModelConfig, TrainConfig
    from jaxgpt.model.gpt import GPT
    from jaxgpt.train.engine import Engine

    cfg = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32, **OPTIONS[name])
    model = GPT(cfg)
    tokens = np.random.default_rng(0).integers(0, 64, (1, 8, 17)).astype(np.int32)  # (accum, micro, T + 1)
    batch = (tokens[..., :-1], tokens[..., 1:])
    results = []
    for mesh, devices in ((MeshConfig(), jax.devices()[:1]), (MeshConfig(data=1, fsdp=8), None)):
        run = Config(model=cfg, train=TrainConfig(batch_size=8, warmup_steps=0, learning_rate=1e-2), mesh=mesh)
        engine = Engine(run, model, objectives.language_model(model), devices=devices)
        state, frozen = engine.start()
        metrics = []
        for _ in range(2):
            state, m = engine.train_step(state, engine.put(batch), frozen)
            metrics.append(jax.device_get(m))
        results.append((metrics, state.params))
    (one, _), (split, placed) = results
    assert np.isfinite(one[1]["loss"]) and one[1]["loss"] < one[0]["loss"]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([m[key] for m in split], [m[key] for m in one], rtol=2e-5)
    wte = placed["wte"]["embedding"]  # (V, C): embed -> fsdp
    assert wte.sharding.spec == P(None, "fsdp")
    if "untied" in name:
        assert placed["lm_head"]["embedding"].sharding.spec == P(None, "fsdp")
