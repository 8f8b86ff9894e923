"""A tiny model for tests and smoke runs: seconds on a CPU."""

from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig

config = Config(
    model=ModelConfig(block_size=32, n_layer=2, n_head=2, n_embd=32),
    data=DataConfig(source="shakespeare", tokenizer="char"),
    train=TrainConfig(out_dir="out/tiny", batch_size=8, max_steps=20, learning_rate=3e-3, warmup_steps=5,
                      log_interval=5, eval_interval=10, eval_steps=2, sample_interval=0, sample_tokens=40),
)
