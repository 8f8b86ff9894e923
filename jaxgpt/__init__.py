"""jaxgpt: GPT-2 in JAX/Flax, from raw text to a finetuned model."""
