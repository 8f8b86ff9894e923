"""Default run: a character-level GPT on the embedded Shakespeare corpus, sized for a 2-core CPU (~8 min)."""

from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig

config = Config(
    model=ModelConfig(block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    data=DataConfig(source="shakespeare", tokenizer="char"),
    train=TrainConfig(
        out_dir="out/shakespeare_char", batch_size=32, max_steps=1800, learning_rate=2e-3, min_lr=2e-4,
        warmup_steps=100, weight_decay=0.1, beta2=0.99, eval_interval=300, eval_steps=20,
        sample_interval=600, sample_tokens=300,
    ),
)
