"""Default run: a character-level GPT on the embedded Shakespeare corpus, sized for a 2-core CPU (about 2 minutes on an Intel Xeon)."""

from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig

# Context 64 and batch 64 (4,096 characters a step, as 128 x 32 gave): on a CPU the step is 1.26x faster
# than at context 128, and 900 steps reach a lower validation loss than 1,000 did there. The batch is taken
# in 8 micro-batches of 8 sequences, two at a time (the same gradient, summed): a micro-batch's activations
# stay in a core's cache, and XLA computes the two side by side. On a 2-core CPU that step is about 1.5x
# faster than the batch in one piece (benchmarks/RESULTS.md).
config = Config(
    model=ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    data=DataConfig(source="shakespeare", tokenizer="char"),
    train=TrainConfig(
        out_dir="out/shakespeare_char", batch_size=64, grad_accum=8, grad_accum_unroll=2, max_steps=900,
        learning_rate=8e-3, min_lr=8e-4, warmup_steps=100, weight_decay=0.1, beta2=0.99, eval_interval=300,
        eval_steps=20, sample_interval=450, sample_tokens=300,
    ),
)
