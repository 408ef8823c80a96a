"""SFT configs: `get_config("tiny")` (random tiny model, seconds on CPU) and `get_config("smollm2")`
(the embedded SmolLM2-135M-Instruct, InstructGPT's SFT hyperparameters).

    python experiments/sft.py --config=experiments/configs/sft.py:tiny --workdir=runs/sft
    python experiments/sft.py --config=experiments/configs/sft.py:smollm2 --workdir=runs/sft \\
        --config.data.train_files='("demos.jsonl",)' --config.optim.lr=3e-5
"""

import ml_collections

from instructjax.train.config import base_config, data_config

PRESETS = ("tiny", "smollm2")


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"unknown SFT preset {arg!r}: expected one of {PRESETS}")
    config = base_config()

    config.data = data_config("demonstrations")
    config.data.max_len = 256  # tokens per row (prompt + response + EOS)
    config.data.truncation = "drop"  # too long: "drop" the example or "truncate_prompt" from the left (counted)
    config.data.loss_on = "response"  # loss targets: "response" (+ EOS, InstructGPT) or "all" tokens
    config.data.pack = False  # pack several examples per row (attention stays inside each example)
    config.data.chat_template = True  # render prompts with the tokenizer's chat template

    config.eval.batch_size = 8  # rows per validation batch
    config.eval.num_batches = 0  # validation batches per evaluation; 0: the whole validation split
    config.eval.num_samples = 4  # validation prompts answered and written to WORKDIR/samples/
    config.eval.max_new_tokens = 64  # length budget of those answers
    config.eval.temperature = 0.0  # sampling temperature of those answers (0: greedy)

    if arg == "tiny":  # random tiny model + byte-level tokenizer on the shipped examples
        config.num_steps = 40
        config.optim.lr = 3e-3
        config.optim.warmup_steps = 4
        config.data.max_len = 192
        config.checkpoint.every_steps = 20
        config.eval.every_steps = 20
        config.eval.num_samples = 2
        config.eval.max_new_tokens = 16
    else:  # InstructGPT SFT (appendix C): 16 epochs, dropout 0.2, cosine to 10%, no warmup, lr 9.65e-6, batch 32
        config.init.source = "default"
        config.num_steps = 0
        config.num_epochs = 16.0
        config.batch_size = 32
        config.microbatches = 4
        config.model.dtype = "auto"  # bfloat16 where bf16 compute is native, else float32
        config.model.dropout_rate = 0.2
        config.optim.lr = 9.65e-6
        config.data.max_len = 512
        config.checkpoint.every_steps = 50
        config.eval.every_steps = 50
        config.log_every_steps = 1
    return config
