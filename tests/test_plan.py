"""`jaxgpt plan`: the engine's step compiled for GPU and TPU targets on this CPU machine (no hardware).

Needs the compile plugins of the `plan` extra (in the test extras); conftest starts JAX on the CPU alone.
"""

import json

import pytest

from jaxgpt.cli import main as cli
from jaxgpt.plan import hlo, targets
from jaxgpt.plan.step import Job, compile_step, largest_micro_batch, sizes
from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig

TINY = ["--config", "configs/tiny.py", "--data.tokenizer=gpt2", "--model.dtype=bfloat16"]


def plan(tmp_path, capsys, *args):
    out = tmp_path / "plan.json"
    code = cli.main(["plan", *TINY, "--json", str(out), "--overwrite", *args])
    text = capsys.readouterr()
    return code, text, (json.loads(out.read_text())["plans"] if out.exists() else None)


def test_gpu_and_tpu_plans_name_their_fused_attention(tmp_path, capsys):
    code, text, plans = plan(tmp_path, capsys, "--target", "h100,v5e-1", "--no-search",
                             "--model.block_size=128")
    assert code == 0, text.err
    gpu, tpu = plans
    assert gpu["step"]["attention"] == "cudnn"
    assert "__cudnn$fmhaSoftmax" in gpu["step"]["kernels"]["cudnn"]
    assert "__cudnn$fmhaSoftmaxBackward" in gpu["step"]["kernels"]["cudnn"]
    assert tpu["step"]["attention"] == "pallas" and tpu["step"]["kernels"]["pallas"] == ["tpu_custom_call"]
    for p in plans:
        assert p["step"]["fits"] and p["step"]["total_gib"] > 0 and p["step"]["collectives"] == {}
        assert p["roofline"]["step_s"] > 0 and p["decode"]["batches"]["8"]["tokens_per_s"] > 0
    assert "FITS" in text.out and "compiling the pretrain step for v5e-1" in text.out


def test_float32_on_a_gpu_recomputes_attention_and_needs_less_memory(tmp_path, capsys):
    args = ("--target", "a100-40g", "--no-search", "--model.dtype=float32", "--model.block_size=256")
    _, _, auto = plan(tmp_path, capsys, *args)
    _, _, kept = plan(tmp_path, capsys, *args, "--model.attention=xla")
    assert auto[0]["step"]["attention"] == "recompute" and auto[0]["step"]["kernels"] == {}
    assert auto[0]["step"]["temporaries_bytes"] < kept[0]["step"]["temporaries_bytes"]


@pytest.mark.parametrize("target", ["h100x8", "v5e-8"])
def test_fsdp_over_eight_devices_splits_the_weights_and_gathers_them(tmp_path, capsys, target):
    code, text, plans = plan(tmp_path, capsys, "--target", target, "--no-search", "--mesh.fsdp=8",
                             "--micro-batch", "8", "--model.n_embd=64", "--model.n_layer=3")
    assert code == 0, text.err
    p = plans[0]
    assert p["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    whole = p["params"] * 4  # float32 weights
    assert whole / 8 <= p["step"]["params_bytes"] < whole / 8 * 1.05  # split 8 ways (LayerNorms stay whole)
    c = p["step"]["collectives"]
    assert c["all-gather"]["bytes"] >= p["params"] * 2 * 0.99  # every weight gathered (bfloat16) for the step
    assert "reduce-scatter" in c or "all-reduce" in c  # gradients go back to their shards
    if target == "v5e-8":  # the TPU compiler gathers layer by layer; XLA's GPU combiner merges small gathers
        assert c["all-gather"]["count"] >= 3


def test_accumulation_loop_multiplies_its_collectives(tmp_path, capsys):
    args = ("--target", "h100x8", "--no-search", "--mesh.fsdp=8", "--micro-batch", "8")
    _, _, once = plan(tmp_path, capsys, *args)
    _, _, four = plan(tmp_path, capsys, *args, "--train.grad_accum=4")
    gathers = once[0]["step"]["collectives"]["all-gather"]["count"]
    assert four[0]["step"]["collectives"]["all-gather"]["count"] > gathers  # weights gathered in every micro-step


def test_search_answer_fits_and_the_next_size_does_not():
    cfg = Config(model=ModelConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32, dtype="bfloat16"),
                 data=DataConfig(tokenizer="gpt2"), train=TrainConfig(batch_size=2))
    job, target = Job(cfg), targets.get("h100")
    known = {m: compile_step(job, target, m, 1 << 40, lambda s: None) for m in (2, 4)}
    usable = known[4].total + (known[4].total - known[2].total) * 5  # the limit lies near micro-batch 14
    known = {m: compile_step(job, target, m, usable, lambda s: None) for m in (2,)}
    best, nxt = largest_micro_batch(job, target, usable, known, lambda s: None)
    assert best.fits and not nxt.fits
    grid = sizes()
    assert grid[grid.index(best.micro) + 1] == nxt.micro
    assert len(known) <= 8  # a few compilations, not one per size


def test_tpu_compiler_refusal_is_a_no_fit(tmp_path, capsys):
    code, text, plans = plan(tmp_path, capsys, "--target", "v5e-1", "--no-search", "--micro-batch", "4096",
                             "--model.n_embd=512", "--model.n_head=8", "--model.block_size=512")
    assert code == 0, text.err
    assert not plans[0]["step"]["fits"] and "DOES NOT FIT" in text.out
    assert "HBM" in plans[0]["step"]["refused"]


def test_nothing_fits_is_one_line_with_advice(tmp_path, capsys):
    code, text, _ = plan(tmp_path, capsys, "--target", "h100", "--mem-fraction", "0.00001")
    assert code == 2
    line = text.err.strip().splitlines()[-1]
    assert line.startswith("error: the step does not fit on h100 even at micro-batch 1") and "--model.remat=full" in line


@pytest.mark.parametrize("args, says", [
    (["--target", "h999"], "unknown target 'h999'; choose one of h100"),
    (["--target", "h100", "--task", "pretrain", "--trainable", "lora"], "pretraining trains every weight"),
    (["--target", "h100", "--margin", "1.5"], "--margin must be in [0, 1)"),
    (["--target", "h100", "--model.n_layr=2"], "model.n_layr"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, says):
    code, text, _ = plan(tmp_path, capsys, *args)
    assert code == 2 and says in text.err and "Traceback" not in text.err
    assert len(text.err.strip().splitlines()) == 1


def test_missing_compiler_names_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(targets, "_installed", lambda name: False)
    code, text, _ = plan(tmp_path, capsys, "--target", "v5e-1")
    assert code == 2 and 'pip install "jaxgpt[plan]"' in text.err and "libtpu" in text.err


def test_existing_json_is_kept(tmp_path, capsys):
    out = tmp_path / "kept.json"
    out.write_text("{}")
    code = cli.main(["plan", *TINY, "--target", "h100", "--json", str(out)])
    assert code == 2 and out.read_text() == "{}" and "--overwrite" in capsys.readouterr().err


HLO = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ag = f32[64]{0} all-gather(f32[8]{0} %x), replica_groups={}, dimensions={0}
  %ar-start = f32[8]{0} all-reduce-start(f32[8]{0} %y), to_apply=%add
  %ar-done = f32[8]{0} all-reduce-done(f32[8]{0} %ar-start)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %w = (s32[], f32[8]{0}) while((s32[], f32[8]{0}) %t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"4"}}
  %rs = bf16[2,4]{1,0} reduce-scatter(bf16[16,4]{1,0} %z), dimensions={0}
  %cp = (f32[4]{0}, f32[4]{0}, u32[], u32[]) collective-permute-start(f32[4]{0} %a), source_target_pairs={{0,1}}
  %ag2 = ((bf16[2]{0}, f32[3]{0}), (bf16[16]{0}, /*index=1*/f32[24]{0})) all-gather-start(%b, %c), dimensions={0}
  %cc = (bf16[8]{0}, f32[8]{0}) custom-call(%a), custom_call_target="__cudnn$fmhaSoftmax"
}
"""


def test_hlo_reading_counts_loop_trips_and_kernels():
    c = hlo.collectives(HLO)
    assert c["all-gather"] == {"count": 5, "bytes": 4 * 64 * 4 + 16 * 2 + 24 * 4}  # a start counts its outputs
    assert c["all-reduce"] == {"count": 4, "bytes": 4 * 8 * 4}  # the -done half is not counted again
    assert c["reduce-scatter"] == {"count": 1, "bytes": 2 * 4 * 2}
    assert c["collective-permute"] == {"count": 1, "bytes": 4 * 4}
    assert hlo.kernels(HLO) == {"cudnn": ["__cudnn$fmhaSoftmax"]}


def test_device_check_asks_plan_for_its_own_device():
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_check", "benchmarks/device_check.py")
    dc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dc)
    assert dc.plan_target("NVIDIA H100 80GB HBM3") == "h100" and dc.plan_target("NVIDIA A100-SXM4-80GB") == "a100-80g"
    assert dc.plan_target("TPU v5 lite") == "v5e-1" and dc.plan_target("cpu") is None
    cfg = ModelConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32, dtype="bfloat16")
    p = dc.plan_prediction(cfg, 4, "h200")
    assert p["step"]["attention"] == "cudnn" and p["step"]["micro_batch"] == 4 and p["step"]["fits"]


def test_fsdp_gathers_the_output_head_once_however_many_chunks(tmp_path, capsys):
    """The fused loss reads the (V, C) head chunk by chunk; under FSDP it must be gathered once a step."""
    gathered = []
    for micro in ("32", "128"):  # 1,024 and 4,096 tokens: one chunk of the head loss, then four
        code, text, plans = plan(tmp_path, capsys, "--target", "h100x8", "--no-search", "--mesh.fsdp=8",
                                 "--micro-batch", micro, "--model.n_embd=64")
        assert code == 0, text.err
        gathered.append(plans[0]["step"]["collectives"]["all-gather"]["bytes"])
    assert gathered[1] < gathered[0] * 1.01  # (the rest: a few kB of token ids and positions)


def test_every_target_has_its_devices_and_hosts():
    for t in targets.TARGETS.values():
        found = targets.devices(t)
        assert len(found) == t.n_devices and len({d.process_index for d in found}) == t.hosts, t.name
        assert t.memory > 0 and t.bandwidth > 0 and t.peak("bfloat16") > 0 and t.source
