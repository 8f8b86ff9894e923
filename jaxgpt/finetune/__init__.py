"""Finetuning a pretrained GPT: text classification (`classify`), instruction following (`instruct`),
the verifiable instruction set they are evaluated on (`tasks`), and the shared loop (`common`)."""
