"""The Shakespeare corpus with the GPT-2 BPE tokenizer. Slower per step than the char model on a CPU:
the 50,257-way output layer dominates the cost of a model this small."""

from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig

config = Config(
    model=ModelConfig(block_size=128, n_layer=4, n_head=4, n_embd=128),
    data=DataConfig(source="shakespeare", tokenizer="gpt2"),
    train=TrainConfig(
        out_dir="out/shakespeare_gpt2bpe", batch_size=32, max_steps=2000, learning_rate=1e-3, min_lr=1e-4,
        warmup_steps=100, eval_interval=250, sample_interval=500, sample_tokens=100,
    ),
)
