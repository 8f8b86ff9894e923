"""Pretrain a GPT: `python train.py [--config configs/NAME.py] [--section.key=value ...]`.

With no arguments it trains the default character-level model on the embedded Shakespeare corpus
(configs/shakespeare_char.py). Rerunning with the same train.out_dir resumes from its latest checkpoint.
"""

import sys

from jaxgpt.cli.main import main_train

if __name__ == "__main__":
    sys.exit(main_train(sys.argv[1:]))
