"""The examples in examples/ do what they say, each on a small random model."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import common  # noqa: E402
import curvature  # noqa: E402
import custom_objective  # noqa: E402
import inside  # noqa: E402
import linear_probe  # noqa: E402
import many_models  # noqa: E402
import per_example_grads  # noqa: E402
import weights_as_data  # noqa: E402

from jaxgpt.model import losses  # noqa: E402
from jaxgpt.model.objectives import mean_loss  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return common.setup(n_layer=2, n_embd=32, block_size=16)


def test_per_example_gradients_equal_a_loop_of_single_gradients(tiny):
    model, params, _, ids = tiny
    batch = jnp.asarray(common.windows(ids, 4, 17))
    many = per_example_grads.per_example_grads(model, params, batch)
    for i in range(4):
        one = jax.grad(lambda p: mean_loss(model, p, batch[i:i + 1, :-1], batch[i:i + 1, 1:]))(params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6), many, one)
    scores = per_example_grads.influence(model, params, batch, batch[0])
    assert scores.shape == (4,) and int(jnp.argmax(scores)) == 0  # a window influences itself most


def test_vmapped_models_equal_separate_runs():
    out = many_models.main(n=3, steps=4, batch=4)
    np.testing.assert_allclose(out["many_losses"], out["single_losses"], rtol=1e-5, atol=1e-6)
    for i, single in enumerate(out["single_states"]):
        # Adam divides by the root of tiny second moments where a gradient is nearly zero, so rounding in the
        # batched products can move such a weight by a sizeable fraction of the step: compared to 1e-3.
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-3, atol=1e-3),
                     out["many_state"].params, single.params)
    assert out["many_losses"][-1].min() < out["many_losses"][0].min()  # they learn


def test_logit_lens_and_patching(tiny):
    model, params, tok, _ = tiny
    src, tgt = jnp.array([tok.encode("ROMEO:")]), jnp.array([tok.encode("JULIET")])
    res = inside.residuals(model, params, src)
    lens = inside.logit_lens(model, params, src)
    # the last layer's lens is the model's own output
    np.testing.assert_allclose(lens[-1], model.apply({"params": params}, src), rtol=1e-5, atol=1e-5)
    for layer in range(model.config.n_layer):  # the whole residual of the source: the source run, exactly
        out = inside.patched(model, params, tgt, layer, res[layer], slice(None))
        np.testing.assert_allclose(out, model.apply({"params": params}, src), rtol=1e-5, atol=1e-5)
    untouched = inside.patched(model, params, tgt, 0, res[0], [])
    np.testing.assert_allclose(untouched, model.apply({"params": params}, tgt), rtol=1e-6, atol=1e-6)


def test_the_custom_objective_equals_a_direct_computation_and_resumes(tiny, tmp_path, capsys):
    model, params, _, ids = tiny
    batch = jnp.asarray(common.windows(ids, 3, 17))
    total, sums = custom_objective.smoothed(model, smoothing=0.1, z_weight=1e-3)(params, {}, (batch,), None)
    logits = model.apply({"params": params}, batch[:, :-1])
    V = logits.shape[-1]
    target = 0.9 * jax.nn.one_hot(batch[:, 1:], V) + 0.1 / V
    direct = jnp.sum(-(target * jax.nn.log_softmax(logits)).sum(-1) + 1e-3 * jax.nn.logsumexp(logits, -1) ** 2)
    np.testing.assert_allclose(total, direct, rtol=1e-5)
    nll, count = losses.cross_entropy(logits, batch[:, 1:])
    np.testing.assert_allclose(sums["nll"], nll, rtol=1e-5)
    assert int(sums["count"]) == int(count)
    out = tmp_path / "run"
    custom_objective.main(str(out), steps=20)
    custom_objective.main(str(out), steps=30)  # the same run, longer: it resumes
    assert "resuming from" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 30 and any("val_nll" in r for r in records)


def test_interpolation_averaging_and_lora_merging():
    out = weights_as_data.main(steps=5)
    model, _, _, _ = common.setup()
    val = out["val"]

    def loss(p):
        return float(mean_loss(model, p, val[:, :-1], val[:, 1:]))

    np.testing.assert_allclose([loss(out["a"]), loss(out["b"])], out["line"][jnp.array([0, -1])], rtol=1e-5)
    np.testing.assert_allclose(loss(out["average"]), out["line"][5], rtol=1e-5)  # t = 0.5
    applied, merged = out["lora"]
    np.testing.assert_allclose(applied, merged, rtol=1e-4, atol=1e-5)


def test_power_iteration_agrees_with_a_dense_hessian(tiny):
    """On the final LayerNorm's 2C parameters (the rest held fixed), against the eigenvalues of the dense
    Hessian of a loss computed without the fused head."""
    model, params, _, ids = tiny
    batch = jnp.asarray(common.windows(ids, 4, 17))
    flat, unravel = jax.flatten_util.ravel_pytree(params["ln_f"])

    def fused(sub):
        return mean_loss(model, {**params, "ln_f": sub}, batch[:, :-1], batch[:, 1:])

    def plain(v):
        logits = model.apply({"params": {**params, "ln_f": unravel(v)}}, batch[:, :-1])
        total, count = losses.cross_entropy(logits, batch[:, 1:])
        return total / count

    eig = np.linalg.eigvalsh(np.asarray(jax.hessian(plain)(flat)))
    value, _ = curvature.top_eigenvalue(fused, params["ln_f"], iters=300)
    np.testing.assert_allclose(value, eig[np.abs(eig).argmax()], rtol=2e-2)
    v = unravel(jnp.asarray(np.random.default_rng(0).normal(size=flat.shape), jnp.float32))
    hv = jax.flatten_util.ravel_pytree(curvature.hvp(fused, params["ln_f"], v))[0]
    np.testing.assert_allclose(hv, jax.hessian(plain)(flat) @ jax.flatten_util.ravel_pytree(v)[0], rtol=1e-3, atol=1e-5)


def test_a_linear_probe_reads_a_property_from_frozen_states():
    out = linear_probe.main(layer=-1, n=128)
    assert out["accuracy"] > out["baseline"] + 0.05


@pytest.mark.parametrize("script", ["per_example_grads.py", "inside.py"])
def test_examples_run_as_scripts(script):
    res = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=300,
                         cwd=EXAMPLES)
    assert res.returncode == 0, res.stderr
