"""Default run: a character-level GPT on the embedded Shakespeare corpus, sized for a 2-core CPU (6 to 11 minutes on an Intel Xeon)."""

from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig

config = Config(
    model=ModelConfig(block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    data=DataConfig(source="shakespeare", tokenizer="char"),
    train=TrainConfig(
        out_dir="out/shakespeare_char", batch_size=32, max_steps=1000, learning_rate=8e-3, min_lr=8e-4,
        warmup_steps=100, weight_decay=0.1, beta2=0.99, eval_interval=250, eval_steps=20,
        sample_interval=500, sample_tokens=300,
    ),
)
