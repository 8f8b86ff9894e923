"""GPT-2 small (124M) from scratch on a GPU or TPU: context 1024, bfloat16 compute, ~0.5M tokens a step.

Point data.source at your own large corpus (a folder of .txt files); the embedded Shakespeare is far too
small for this model and only serves to check that the recipe runs.

Micro-batches (train.batch_size / train.grad_accum sequences of 1,024 per step and device group) that fit,
from `jaxgpt plan` (docs/planning.md; the largest per device, with JAX's default GPU memory pool):
H100 80 GB 144, so the recipe's 64 fits (25.4 GiB); A100 40 GB 56 and L4 24 GB 44: use
--train.grad_accum=16 (32); one TPU v5e chip 26: use --train.grad_accum=32 (16); TPU v5e-8 36 a chip:
the recipe's 64 is 8 a chip.
"""

from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig

config = Config(
    model=ModelConfig.preset("gpt2", block_size=1024, dropout=0.0, dtype="bfloat16"),
    data=DataConfig(source="shakespeare", tokenizer="gpt2"),
    train=TrainConfig(
        out_dir="out/gpt2_124m", batch_size=512, grad_accum=8, max_steps=5000, learning_rate=6e-4,
        min_lr=6e-5, warmup_steps=700, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
        eval_interval=500, eval_steps=50, sample_interval=1000, sample_tokens=128,
    ),
)
