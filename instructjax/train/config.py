"""Config sections every trainer shares (ml_collections), and their conversion to library objects.

Experiment configs (`experiments/configs/*.py`) start from `base_config()` and add their own
sections; every field is declared here with a one-line comment.
"""

from __future__ import annotations

import math
from typing import Optional

import ml_collections
from absl import logging

from instructjax import cpu_runtime, datasets, parallel
from instructjax.data import ComparisonConfig, LoaderConfig
from instructjax.data.render import TRUNCATIONS
from instructjax.data.sft import LOSS_ON
from instructjax.datasets.jsonl import ALL_TIED_POLICIES
from instructjax.models.config import ATTENTION_IMPLS, REMAT_POLICIES
from instructjax.models.lora import LoraConfig
from instructjax.rl.kl import KL_CONTROLLERS, KL_ESTIMATORS
from instructjax.train.optim import SCHEDULES, OptimConfig

INIT_SOURCES = ("random", "hf", "gguf", "default", "workdir")
AUTO_DTYPE = "auto"  # a dtype field's value for bfloat16 where bf16 compute is native, float32 elsewhere
DTYPES = ("float32", "bfloat16", "float16")
COMPUTE_DTYPES = DTYPES + (AUTO_DTYPE,)  # compute dtypes: "auto" is decided at start-up (resolve_dtypes)
# Keys (dotted) with a fixed set of values, checked when a stage's config has them; "" = the model's dtype.
CHOICES = {"init.source": INIT_SOURCES, "model.dtype": COMPUTE_DTYPES, "model.param_dtype": DTYPES,
           "model.remat_policy": REMAT_POLICIES, "model.attention_impl": ATTENTION_IMPLS,
           "optim.schedule": SCHEDULES, "data.truncation": TRUNCATIONS, "data.loss_on": LOSS_ON,
           "data.all_tied": ALL_TIED_POLICIES, "kl.estimator": KL_ESTIMATORS, "kl.controller": KL_CONTROLLERS,
           "rollout.dtype": ("",) + COMPUTE_DTYPES, "reward.dtype": ("",) + COMPUTE_DTYPES,
           "reference.dtype": ("",) + COMPUTE_DTYPES}


def base_config() -> ml_collections.ConfigDict:
    """Run length, batch, model initialisation, optimizer, mesh, checkpoints, logging, test hooks."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds random init, dropout, data order and sampling
    c.num_steps = 100  # optimizer steps; 0: derived from num_epochs
    c.num_epochs = 0.0  # used when num_steps is 0: steps = ceil(num_epochs * train records / batch_size)
    c.batch_size = 8  # global batch: rows over all devices and hosts
    c.microbatches = 1  # gradient accumulation: the batch runs as this many microbatches inside one step
    c.log_every_steps = 1  # metrics.jsonl / TensorBoard interval
    c.export = True  # write WORKDIR/export (HF format with the tokenizer) at the end
    c.accept_changed_inputs = False  # resume on input files changed since WORKDIR/inputs.json (recorded there)

    c.init = ml_collections.ConfigDict()
    c.init.source = "random"  # one of INIT_SOURCES: where the initial weights and tokenizer come from
    c.init.path = ""  # HF directory ("hf"), GGUF file ("gguf") or an earlier stage's workdir ("workdir")
    c.init.preset = "tiny"  # model preset of a random init (ij.models.PRESETS)
    c.init.tokenizer = "tiny"  # tokenizer of a random init: "tiny" (ij.tokenizers.tiny_tokenizer) or a directory

    c.model = ml_collections.ConfigDict()
    c.model.dtype = "float32"  # compute dtype: "bfloat16" = bf16 matmuls over float32 params; "auto" (resolve_dtypes)
    c.model.param_dtype = "float32"  # dtype of the trained (master) params and of the export
    c.model.dropout_rate = 0.0  # residual dropout while training (InstructGPT SFT: 0.2)
    c.model.attention_dropout = 0.0  # dropout on attention probabilities while training (attention_impl einsum only)
    c.model.attention_impl = "einsum"  # einsum | xla | cudnn (jax.nn.dot_product_attention; cudnn: GPU, bf16/f16)
    c.model.remat_policy = "none"  # rematerialisation of each block: none | full | dots | dots_no_batch
    c.model.scan_layers = False  # run the blocks with nn.scan (faster compiles of deep models)
    c.model.frozen_layers = 0  # train only the blocks above the first N (and the heads); 0: all

    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0  # LoRA adapters of this rank on the projections, only they (and a score head) trained; 0: off
    c.lora.alpha = 16.0  # the adapters' update is scaled by alpha / rank
    c.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # HF names
    c.lora.dropout = 0.0  # dropout on the adapters' input while training

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-5  # peak learning rate
    c.optim.schedule = "cosine"  # constant | linear | cosine (the last two decay to final_lr_fraction * lr)
    c.optim.warmup_steps = 0  # linear warmup from 0 to lr
    c.optim.final_lr_fraction = 0.1  # decay floor as a fraction of lr (InstructGPT: 10%)
    c.optim.b1 = 0.9  # Adam beta1
    c.optim.b2 = 0.95  # Adam beta2
    c.optim.eps = 1e-8  # Adam epsilon
    c.optim.weight_decay = 0.0  # decoupled weight decay (not applied to norms and biases)
    c.optim.clip_norm = 1.0  # global gradient-norm clip; 0 disables
    c.optim.skip_nonfinite = 0  # updates with NaN/inf gradients skipped (counted) before the NaN guard stops; 0: none

    c.parallel = ml_collections.ConfigDict()
    c.parallel.mesh_shape = (-1, 1, 1)  # sizes of the ('data', 'fsdp', 'tensor') axes; one -1 = the remaining devices
    c.parallel.rules = parallel.DEFAULT_RULES  # logical axis name -> mesh axes, for params and activations
    c.parallel.multi_host = False  # join a multi-process job first (jax.distributed.initialize; docs/training.md)
    c.parallel.coordinator_address = ""  # multi_host: process 0's HOST:PORT; "": from the cluster environment
    c.parallel.num_processes = -1  # multi_host: processes of the job; -1: from the cluster environment
    c.parallel.process_id = -1  # multi_host: this process's id in 0..num_processes-1; -1: from the cluster environment

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 100  # checkpoint interval (a checkpoint is also written after the last step)
    c.checkpoint.keep = 3  # newest checkpoints kept (at least 2: docs/training.md#nan--inf-guard)
    c.checkpoint.async_save = True  # write checkpoints in the background

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 0  # evaluation interval (also after the last step); 0: never evaluate

    c.debug = ml_collections.ConfigDict()
    c.debug.nan_at_step = -1  # test hook: multiply the loss of this step by NaN; -1 off
    c.debug.step_delay_s = 0.0  # test hook: sleep after each step (time to kill a run mid-way)
    return c


# Fields only each script's own config has (dotted), and the config files that have them.
STAGE_FIELDS = {"sft": (("data.loss_on",), "sft.py"), "reward": (("normalize",), "reward.py"),
                "dpo": (("beta",), "dpo.py"), "ppo": (("ppo", "rollout"), "ppo.py or grpo.py"),
                "pipeline": (("algorithm", "rounds"), "pipeline.py")}


def resolve_dtypes(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose dtype fields set to "auto" name the compute dtype that is fast on this
    machine: bfloat16 where `cpu_runtime.native_bf16()` (accelerators, CPUs with avx512_bf16 or AMX),
    else float32 (bf16 is slower than f32 on an AVX2-only CPU). Decided once, logged; a dtype field
    given explicitly is kept."""
    config = config.copy_and_resolve_references()
    auto = [(section, key) for section, key in _dtype_fields(config) if section[key] == AUTO_DTYPE]
    if auto:
        dtype = "bfloat16" if cpu_runtime.native_bf16() else "float32"
        for section, key in auto:
            section[key] = dtype
        logging.info("compute dtype 'auto' -> %s (%s); set the dtype fields explicitly to override", dtype,
                     "native bf16 here" if dtype == "bfloat16" else "this CPU has no avx512_bf16/AMX")
    return config


def _dtype_fields(config: ml_collections.ConfigDict):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _dtype_fields(value)
        elif key == "dtype":
            yield config, key


def check_stage_config(config: ml_collections.ConfigDict, stage: str, source: str) -> None:
    """A ValueError naming `source` and the expected file when `config` is another stage's, or naming the
    key of a value out of its choices (`check_values`)."""
    fields, files = STAGE_FIELDS[stage]
    missing = [f for f in fields if config_value(config, f) is None]
    if missing:
        raise ValueError(f"--config={source} is not a {stage} config (it has no {', '.join(missing)}): "
                         f"use experiments/configs/{files}:<preset>")
    check_values(config)


def check_values(config: ml_collections.ConfigDict, prefix: str = "--config.",
                 choices: dict[str, tuple] = CHOICES) -> None:
    """A ValueError naming the key (`prefix` + dotted key) of the first value out of its `choices`."""
    for key, allowed in choices.items():
        value = config_value(config, key)
        if value is not None and value not in allowed:
            raise ValueError(f"{prefix}{key}={value!r}: expected one of {allowed}")


def config_value(config: ml_collections.ConfigDict, dotted: str) -> object:
    """`config`'s value at a dotted key; None when it has no such key."""
    for key in dotted.split("."):
        if not isinstance(config, ml_collections.ConfigDict) or key not in config:
            return None
        config = config[key]
    return config


def data_config(kind: str) -> ml_collections.ConfigDict:
    """Which JSONL files to build (TFDS) and how the grain loader reads them."""
    c = ml_collections.ConfigDict()
    c.train_files = ()  # JSONL files of the train split; (): the shipped examples of this kind
    c.validation_files = ()  # JSONL files of the validation split; (): use validation_fraction
    c.validation_fraction = 0.2  # fraction of the train records held out when there are no validation_files
    c.split_seed = 0  # seed of the validation draw
    c.max_chars = 0  # records with more characters are skipped (counted); 0: no limit
    c.name = kind  # name prefix of the built dataset
    c.data_dir = ""  # where datasets are built; "": WORKDIR/data
    c.num_threads = 2  # threads of the tokenizing map
    c.prefetch = 64  # records read ahead by those threads
    c.worker_count = 0  # grain worker processes for tokenizing; 0: in the training process
    return c


def comparison_rows(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`c` (a `data_config("comparisons")`) with how each record becomes K rows of prompt + completion:
    the reward model's and DPO's data section."""
    c.max_len = 256  # tokens per completion row (prompt + completion + EOS)
    c.max_completions = 4  # K is padded to this; records with more completions are dropped (counted)
    c.truncation = "drop"  # too long: "drop" the record or "truncate_prompt" from the left (counted)
    c.chat_template = True  # render prompts with the tokenizer's chat template
    c.all_tied = "error"  # records whose completions all share one rank: "error" or "skip" them (counted)
    return c


def comparison_config(data: ml_collections.ConfigDict) -> ComparisonConfig:
    """The `ComparisonConfig` of a `comparison_rows` section."""
    return ComparisonConfig(max_len=data.max_len, max_completions=data.max_completions, truncation=data.truncation,
                            chat_template=data.chat_template)


def lora_config(config: ml_collections.ConfigDict) -> Optional[LoraConfig]:
    """The adapters of `config.lora` (None when rank is 0); a ValueError naming the key of an invalid value."""
    if config.lora.rank == 0:
        return None
    try:
        return LoraConfig(rank=config.lora.rank, alpha=config.lora.alpha, targets=tuple(config.lora.targets),
                          dropout=config.lora.dropout)
    except ValueError as e:
        raise ValueError(f"--config.{e}") from None


def optim_config(config: ml_collections.ConfigDict, total_steps: int) -> OptimConfig:
    """The optimizer of `config.optim`, decaying over `total_steps`."""
    return OptimConfig(total_steps=total_steps, **config.optim)


def dataset_config(data: ml_collections.ConfigDict, kind: str) -> datasets.DatasetConfig:
    """The TFDS build of `data`'s files (no train files: the shipped examples of `kind`); given
    validation files replace the held-out fraction."""
    fraction = 0.0 if data.validation_files else data.validation_fraction
    split = {"validation_files": tuple(data.validation_files), "validation_fraction": fraction,
             "split_seed": data.split_seed, "max_chars": data.max_chars, "name": data.name,
             "all_tied": data.get("all_tied", "error")}
    if not data.train_files:
        return datasets.example_config(kind, **split)
    return datasets.DatasetConfig(kind=kind, train_files=tuple(data.train_files), **split)


def loader_config(data: ml_collections.ConfigDict, batch_size: int, seed: int, *, train: bool) -> LoaderConfig:
    """Training: shuffled, repeating forever. Evaluation: one pass in order, the last batch padded."""
    return LoaderConfig(batch_size=batch_size, seed=seed, shuffle=train, num_epochs=None if train else 1,
                        num_threads=data.num_threads, prefetch=data.prefetch, worker_count=data.worker_count)


def num_train_steps(config: ml_collections.ConfigDict, num_records: int) -> int:
    """`num_steps`, or when it is 0, enough steps for `num_epochs` passes over `num_records`."""
    if config.num_steps > 0:
        return config.num_steps
    if config.num_epochs <= 0:
        raise ValueError("config: set num_steps > 0 or num_epochs > 0")
    return math.ceil(config.num_epochs * num_records / config.batch_size)
