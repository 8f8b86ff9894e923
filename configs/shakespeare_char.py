"""Default run: a character-level GPT on the embedded Shakespeare corpus, sized for a 2-core CPU (a few minutes;
the measured times are in benchmarks/RESULTS.md)."""

from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig

# Context 64 and batch 64 (4,096 characters a step): on a CPU a shorter context at the same characters per
# step is faster and learns as well. The batch is taken in 8 micro-batches of 8 sequences, two at a time (the
# same gradient, summed): a micro-batch's activations stay in a core's cache, and XLA computes the two side
# by side (the measurements are in benchmarks/RESULTS.md).
config = Config(
    model=ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    data=DataConfig(source="shakespeare", tokenizer="char"),
    train=TrainConfig(
        out_dir="out/shakespeare_char", batch_size=64, grad_accum=8, grad_accum_unroll=2, max_steps=900,
        learning_rate=8e-3, min_lr=8e-4, warmup_steps=100, weight_decay=0.1, beta2=0.99, eval_interval=300,
        eval_steps=20, sample_interval=450, sample_tokens=300,
    ),
)
