"""GPT-2 small (124M) on a corpus prepared into shards: OpenWebText or a FineWeb-Edu sample, on GPUs or TPUs.

First prepare the corpus (see the README's "Data at scale"), e.g.
    jaxgpt prepare fineweb-edu/sample/10BT/*.parquet --out data/fineweb_edu_10b
then point data.source at the folder:
    python train.py --config configs/gpt2_124m_prepared.py --data.source=data/fineweb_edu_10b
Settings as build-nanogpt's 10B-token run: 524,288 tokens a step (512 sequences of 1024), 19,073 steps (one
pass over 10B tokens), warmup 715 steps, learning rate 6e-4 decayed to 6e-5, AdamW (0.9, 0.95), weight
decay 0.1, clipping at 1.0. The micro-batch (batch_size / grad_accum sequences per step and device group)
must fit: `jaxgpt plan --config configs/gpt2_124m_prepared.py --target <yours>` tells; the recipe's 64 fits
an H100 80 GB; an A100 40 GB takes 56 at most (--train.grad_accum=16), one TPU v5e chip 26
(--train.grad_accum=32); see configs/gpt2_124m.py and docs/planning.md.
"""

from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig

config = Config(
    model=ModelConfig.preset("gpt2", block_size=1024, dropout=0.0, dtype="bfloat16"),
    data=DataConfig(source="data/fineweb_edu_10b", tokenizer="gpt2"),
    train=TrainConfig(
        out_dir="out/gpt2_124m_prepared", batch_size=512, grad_accum=8, max_steps=19073, learning_rate=6e-4,
        min_lr=6e-5, warmup_steps=715, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
        eval_interval=250, eval_steps=20, sample_interval=1000, sample_tokens=64, sample_prompt="Hello, I'm a",
        keep_checkpoints=2,
    ),
)
