"""Reward-model configs: `get_config("tiny")` (random tiny model, seconds on CPU) and
`get_config("smollm2")` (from an SFT run of SmolLM2-135M-Instruct, InstructGPT's RM settings).

    python experiments/reward.py --config=experiments/configs/reward.py:tiny --workdir=runs/rm
    python experiments/reward.py --config=experiments/configs/reward.py:smollm2 --workdir=runs/rm \\
        --config.init.path=runs/sft --config.data.train_files='("comparisons.jsonl",)'
"""

import ml_collections

from instructjax.train.config import base_config, comparison_rows, data_config

PRESETS = ("tiny", "smollm2")


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"unknown reward preset {arg!r}: expected one of {PRESETS}")
    config = base_config()
    config.batch_size = 8  # prompts per step (each with its K completions: K rows per prompt)

    config.data = data_config("comparisons")
    config.data = comparison_rows(config.data)  # max_len 256, max_completions (K) 4, truncation, chat_template

    config.loss = ml_collections.ConfigDict()
    config.loss.margin = 0.0  # m in -log sigmoid(r_w - r_l - m) (docs/formulas.md#ranking-loss-options); 0: InstructGPT
    config.loss.center_coef = 0.0  # c in + c * mean(r^2) of each prompt's completions (0.01 when used); 0: off

    config.eval.batch_size = 8  # prompts per validation batch
    config.eval.num_batches = 0  # validation batches per evaluation; 0: the whole validation split

    config.normalize = ml_collections.ConfigDict()
    config.normalize.reference = "demonstrations"  # bias so these score mean 0: demonstrations | sft_samples | none
    config.normalize.unit_std = False  # also a gain so that the reference scores have std 1 (Ziegler et al.)
    config.normalize.max_examples = 0  # reference sequences scored; 0: all
    config.normalize.batch_size = 8  # reference sequences per forward (and per sampling call)
    config.normalize.max_new_tokens = 64  # length budget of SFT samples (reference sft_samples)
    config.normalize.temperature = 1.0  # sampling temperature of SFT samples (docs/formulas.md#sampling)
    # JSONL of demonstrations (reference demonstrations) or prompts (reference sft_samples); every
    # record is a reference: no validation split
    config.normalize.data = data_config("demonstrations")
    config.normalize.data.validation_fraction = 0.0

    if arg == "tiny":  # random tiny model + byte-level tokenizer on the shipped examples
        config.num_steps = 30
        config.optim.lr = 1e-3
        config.optim.warmup_steps = 3
        config.data.max_len = 128
        config.checkpoint.every_steps = 10
        config.eval.every_steps = 10
    else:  # InstructGPT RM (appendix C): from the SFT model, 1 epoch, lr 9e-6, batch 64 prompts, K 4..9
        config.init.source = "workdir"
        config.init.path = "runs/sft"
        config.num_steps = 0
        config.num_epochs = 1.0
        config.batch_size = 64
        config.microbatches = 8
        config.model.dtype = "auto"  # bfloat16 where bf16 compute is native, else float32
        config.model.scan_layers = True
        config.optim.lr = 9e-6
        config.optim.final_lr_fraction = 0.1
        config.data.max_len = 512
        config.data.max_completions = 9
        config.checkpoint.every_steps = 50
        config.eval.every_steps = 50
    return config
