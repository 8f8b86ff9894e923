"""How closely converted weights reproduce Hugging Face transformers (PyTorch, float32, CPU).

    python benchmarks/parity.py                      # GPT-2 124M shape, random weights
    python benchmarks/parity.py --preset gpt2-medium --seq 256
    python benchmarks/parity.py --hf-dir path/to/gpt2   # real weights you downloaded

A random GPT2LMHeadModel (transformers' own initialisation, then LayerNorm gains and every bias
randomised too) is saved with save_pretrained, read back with jaxgpt.load_pretrained, and both models
see the same batch. Printed: the largest logit difference, the loss difference, the worst per-tensor
relative gradient error ||g_jax - g_torch|| / ||g_torch||, whether 40 greedy tokens agree, and the
conversion time. Needs the test extra (torch, transformers).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxgpt.store import convert
from jaxgpt.config import ModelConfig  # noqa: E402
from jaxgpt.model.gpt import GPT
from jaxgpt.model.sampling import generate
from jaxgpt.store.loader import load_pretrained
from jaxgpt.model.objectives import mean_loss


def random_model(preset: str, seed: int) -> GPT2LMHeadModel:
    m = ModelConfig(n_layer=2, n_head=2, n_embd=64) if preset == "tiny" else ModelConfig.preset(preset)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_embd=m.n_embd, n_layer=m.n_layer, n_head=m.n_head, resid_pdrop=0.0,
                                       attn_implementation="eager",
                                       embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f") or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2", choices=["tiny", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"],
                        help="tiny: 2 layers, width 64, for a quick check that the script runs")
    parser.add_argument("--hf-dir", default=None, help="real weights instead of random ones")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.hf_dir or tmp)
        if args.hf_dir:
            model = GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()
        else:
            model = random_model(args.preset, args.seed)
            model.save_pretrained(path)
        t0 = time.perf_counter()
        cfg, params = load_pretrained(path)
        jax.block_until_ready(params)
        load_s = time.perf_counter() - t0

        rng = np.random.default_rng(args.seed)
        tokens = rng.integers(0, cfg.vocab_size, (args.batch, args.seq + 1))
        x, y = tokens[:, :-1], tokens[:, 1:]
        logits = np.asarray(GPT(cfg).apply({"params": params}, x))
        loss, grads = jax.value_and_grad(lambda p: mean_loss(GPT(cfg), p, x, y))(params)
        ref = model(torch.as_tensor(x))
        ref_loss = torch.nn.functional.cross_entropy(ref.logits.flatten(0, 1), torch.as_tensor(y).flatten())
        ref_loss.backward()
        worst, worst_name = 0.0, ""
        for name, p in model.named_parameters():
            hf_name = name.removeprefix("transformer.")
            node = grads
            for part in convert.name_table(cfg)[hf_name][0]:
                node = node[part]
            rel = float(np.linalg.norm(np.asarray(node) - p.grad.numpy()) / np.linalg.norm(p.grad.numpy()))
            worst, worst_name = max((worst, worst_name), (rel, hf_name))

        prompt = tokens[:1, :16]
        ours = generate(GPT(cfg), params, prompt, 40, key=jax.random.key(0), temperature=0.0)
        with torch.no_grad():
            theirs = model.generate(torch.as_tensor(prompt), max_new_tokens=40, do_sample=False,
                                    attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                                    pad_token_id=0, eos_token_id=None).numpy()

    print("| model | batch x seq | max abs logit diff | loss diff | worst grad rel. error | greedy 40 | load |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.hf_dir or args.preset + ' (random)'} | {args.batch}x{args.seq} | "
          f"{np.abs(logits - ref.logits.detach().numpy()).max():.2e} | {abs(float(loss) - ref_loss.item()):.2e} | "
          f"{worst:.2e} ({worst_name}) | {'identical' if np.array_equal(ours, theirs) else 'DIFFERENT'} | "
          f"{load_s:.2f} s |")


if __name__ == "__main__":
    main()
