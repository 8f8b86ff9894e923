"""The model: GPT-2 (gpt), its attention kernels (attention), LoRA (lora), which parameters train (parts),
the loss numerics (losses), the objectives that bind a model to them (objectives), and sampling."""
