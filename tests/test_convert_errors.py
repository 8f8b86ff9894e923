"""Bad inputs to `jaxgpt convert`: one clear line, exit status 2, and nothing written."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hf_reference import TINY, random_hf_model

from jaxgpt.cli.main import main
from jaxgpt.store.convert import read_safetensors, write_safetensors


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    random_hf_model(seed=4, **TINY).save_pretrained(path)
    return path


def _copy(src, tmp_path, name="src"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _fails(capsys, tmp_path, src, pattern, *extra):
    dst = tmp_path / "out"
    existed = dst.exists()
    code = main(["convert", str(src), str(dst), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert pattern in err, err
    assert dst.exists() == existed  # nothing written ...
    assert not list(tmp_path.glob(".out.*"))  # ... not even a staging folder
    return err


def _edit_tensors(path, edit):
    tensors = {k: np.array(v) for k, v in read_safetensors(path / "model.safetensors").items()}
    edit(tensors)
    write_safetensors(path / "model.safetensors", tensors, {"format": "pt"})


def test_a_directory_of_neither_kind(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("hello")
    _fails(capsys, tmp_path, tmp_path / "src", "is neither a Hugging Face GPT-2 directory")
    _fails(capsys, tmp_path, tmp_path / "missing", "does not exist")
    _fails(capsys, tmp_path, tmp_path / "src" / "notes.txt", "is a file")


def test_a_missing_tensor_is_named(hf_dir, tmp_path, capsys):
    src = _copy(hf_dir, tmp_path)
    _edit_tensors(src, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    _fails(capsys, tmp_path, src, "has no tensor 'transformer.h.1.mlp.c_fc.bias'")


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(hf_dir, tmp_path, capsys):
    src = _copy(hf_dir, tmp_path)
    _edit_tensors(src, lambda t: t.update({"transformer.h.0.attn.c_proj.weight": np.zeros((32, 31), np.float32)}))
    _fails(capsys, tmp_path, src, "'transformer.h.0.attn.c_proj.weight' in")
    err = _fails(capsys, tmp_path, src, "has shape (32, 31), expected (32, 32)")
    assert "n_embd=32" in err


def test_an_extra_layer_does_not_match_the_config(hf_dir, tmp_path, capsys):
    src = _copy(hf_dir, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "n_layer": 1}))
    _fails(capsys, tmp_path, src, "'transformer.h.1.attn.c_attn.bias' (and 11 more)")


@pytest.mark.parametrize("damage,pattern", [
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:5], "header too small"),
    (lambda b: b[:8] + b"\xff" * 20 + b[28:], "invalid UTF-8 in header"),
    (lambda b: (10**12).to_bytes(8, "little") + b[8:], "header too large"),
])
def test_a_damaged_safetensors_file(hf_dir, tmp_path, capsys, damage, pattern):
    src = _copy(hf_dir, tmp_path)
    f = src / "model.safetensors"
    f.write_bytes(damage(f.read_bytes()))
    err = _fails(capsys, tmp_path, src, pattern)
    assert "is not a valid safetensors file" in err and "download or export it again" in err


def test_other_architectures_are_refused(hf_dir, tmp_path, capsys):
    src = _copy(hf_dir, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral"}))
    _fails(capsys, tmp_path, src, "jaxgpt reads GPT-2, Llama and Qwen3")
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))  # GPT-2's settings, not Llama's
    _fails(capsys, tmp_path, src, "config.json has no 'hidden_size'")
    (src / "config.json").write_text(json.dumps({**cfg, "activation_function": "relu"}))
    _fails(capsys, tmp_path, src, "activation_function='relu'")
    (src / "config.json").write_text("{not json")
    _fails(capsys, tmp_path, src, "is damaged or unreadable")


def test_openai_hparams_that_do_not_match_the_tensors(fixtures_dir, tmp_path, capsys):
    src = _copy(fixtures_dir / "openai_tf", tmp_path)
    hparams = json.loads((src / "hparams.json").read_text())
    (src / "hparams.json").write_text(json.dumps({**hparams, "n_embd": 64}))
    _fails(capsys, tmp_path, src, "'model/wte' in")
    (src / "hparams.json").write_text(json.dumps({**hparams, "n_layer": 3}))
    _fails(capsys, tmp_path, src, "has no tensor 'model/h2/ln_1/g'")
    (src / "hparams.json").write_text(json.dumps({**hparams, "n_head": 5}))
    _fails(capsys, tmp_path, src, "must be divisible")
    (src / "model.ckpt.index").unlink()
    _fails(capsys, tmp_path, src, "model.ckpt.index")


def test_the_destination_is_never_replaced_silently(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _fails(capsys, tmp_path, hf_dir, "already exists")
    _fails(capsys, tmp_path, hf_dir, "refusing to replace it", "--overwrite")  # not an earlier output
    assert (out / "keep.txt").read_text() == "mine"
    shutil.rmtree(out)
    assert main(["convert", str(hf_dir), str(out)]) == 0
    assert main(["convert", str(hf_dir), str(out), "--overwrite"]) == 0  # an earlier output may be replaced
    assert (out / "checkpoints").is_dir()


def test_pytorch_bin_is_only_read_safely(hf_dir, tmp_path, capsys):
    import torch

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(hf_dir / "config.json", src)

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled an arbitrary object",))

    torch.save({"x": Payload()}, src / "pytorch_model.bin")
    err = _fails(capsys, tmp_path, src, "weights_only")
    assert "unpickled" not in capsys.readouterr().out + err

    # Without PyTorch installed, the message says what to install.
    code = ("import sys; sys.modules['torch'] = None\n"
            "from jaxgpt.cli.main import main\n"
            f"sys.exit(main(['convert', {str(src)!r}, {str(tmp_path / 'out')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2 and "pip install torch" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
