"""DPO / IPO configs: `get_config("tiny")` (random tiny model, seconds on CPU) and `get_config("smollm2")`
(from an SFT run of SmolLM2-135M-Instruct, the settings of Rafailov et al. 2023).

    python experiments/dpo.py --config=experiments/configs/dpo.py:tiny --workdir=runs/dpo
    python experiments/dpo.py --config=experiments/configs/dpo.py:smollm2 --workdir=runs/dpo \\
        --config.init.path=runs/sft --config.data.train_files='("runs/comparisons.jsonl",)' --config.loss=ipo
"""

import ml_collections

from instructjax.train.config import base_config, comparison_rows, data_config

PRESETS = ("tiny", "smollm2")


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"unknown DPO preset {arg!r}: expected one of {PRESETS}")
    config = base_config()
    config.batch_size = 8  # prompts per step (each with its K completions: K rows per prompt, all ordered pairs)
    config.loss = "dpo"  # dpo: -log sigmoid(beta h); ipo: (h - 1/(2 beta))^2 (docs/formulas.md#dpo)
    config.beta = 0.1  # beta: strength of the implicit KL to the reference (larger: stay closer)

    config.data = data_config("comparisons")
    config.data = comparison_rows(config.data)  # max_len 256, max_completions (K) 4, truncation, chat_template

    config.eval.batch_size = 8  # prompts per validation batch and per batch of the one reference pass
    config.eval.num_batches = 0  # validation batches per evaluation; 0: the whole validation split

    if arg == "tiny":  # random tiny model + byte-level tokenizer on the shipped example comparisons
        config.num_steps = 30
        config.optim.lr = 1e-3
        config.optim.warmup_steps = 3
        config.data.max_len = 128
        config.checkpoint.every_steps = 10
        config.eval.every_steps = 10
    else:  # Rafailov et al. 2023: beta 0.1, lr 1e-6 after a warmup, batch 64 (Adam here, not RMSprop); 1 epoch
        config.init.source = "workdir"
        config.init.path = "runs/sft"
        config.num_steps = 0
        config.num_epochs = 1.0
        config.batch_size = 64
        config.microbatches = 8
        config.model.dtype = "auto"  # bfloat16 where bf16 compute is native, else float32
        config.model.scan_layers = True
        config.optim.lr = 1e-6
        config.optim.warmup_steps = 10
        config.data.max_len = 512
        config.data.max_completions = 9
        config.checkpoint.every_steps = 50
        config.eval.every_steps = 50
    return config
