"""Finetune OpenAI's GPT-2 (124M) on Shakespeare: the classic "continue pretraining" run.

First convert the weights (see the README's "Pretrained GPT-2" section):
    jaxgpt convert path/to/gpt2 out/gpt2          # a Hugging Face or OpenAI GPT-2 directory
then:
    python train.py --config configs/finetune_gpt2_shakespeare.py
`train.init_from` may also point straight at the Hugging Face or OpenAI directory, or at gpt2-medium/
large/xl weights: the model's shape always comes from the pretrained weights. A small constant learning
rate after a short warm-up keeps what GPT-2 knows; dropout 0.1 slows overfitting on a corpus this small.
On a GPU or TPU set --model.dtype=bfloat16 and a longer context (up to 1024). As it stands (float32,
context 256, batch 8) `jaxgpt plan` finds it fits an L4 24 GB in 3.9 GiB (micro-batch 56 at most) and an
A100 40 GB in 4.2 GiB (96 at most).
"""

from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig

config = Config(
    model=ModelConfig(block_size=256, dropout=0.1),
    data=DataConfig(source="shakespeare", tokenizer="gpt2"),
    train=TrainConfig(
        init_from="out/gpt2", out_dir="out/gpt2_shakespeare", batch_size=8, max_steps=500,
        learning_rate=3e-5, min_lr=3e-5, warmup_steps=20, weight_decay=0.0, beta2=0.95,
        eval_interval=100, eval_steps=20, sample_interval=250, sample_tokens=100,
    ),
)
