"""The command line: `python train.py` and `jaxgpt` (main), its data and evaluation commands (data), `jaxgpt
plan` (plan), settings help (help) and `jaxgpt info` (info)."""
