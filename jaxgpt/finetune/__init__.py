"""Finetuning a pretrained GPT on the training engine: text classification (`classify`), instruction
following (`instruct`), preference tuning (`dpo`), the verifiable instruction set they are evaluated on
(`tasks`), and what they share (`common`)."""
