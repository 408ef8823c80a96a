"""InstructGPT pipeline configs: `tiny` (random tiny model, the whole pipeline in about a minute;
tests and notebooks), `quick` (`make demo`: SmolLM2-135M-Instruct on a 2-core CPU, plain PPO), `full`
(a longer run of the same, PPO-ptx beside PPO), `hf` (an HF checkpoint directory given on the command
line) and `gold` (`quick` with PPO against the task's own checker: the gold-reward diagnostic).
`--config.algorithm=ppo|grpo|rloo|dpo` picks the policy step and `--config.rounds=N` iterates comparisons,
reward model and policy (docs/pipeline.md).

    python experiments/pipeline.py --config=experiments/configs/pipeline.py:quick --workdir=runs/demo
    python experiments/pipeline.py --config=experiments/configs/pipeline.py:hf --workdir=runs/qwen \\
        --config.init.path=/path/to/hf_dir

The stage sections `sft`, `reward`, `ppo` and `dpo` are the configs of experiments/configs/{sft,reward,ppo,dpo}.py;
any of their fields can be overridden (`--config.sft.optim.lr=1e-5`) except PIPELINE_FIELDS: the pipeline
fills in their seed, export, initial checkpoints and data files from `seed`, `init` and the earlier
stages (PPO's reward model only when `ppo.reward.source` reads one: `--config.ppo.reward.source=function
--config.ppo.reward.function=instructjax.tasks.rewards:constraint_fraction` trains on the task's checker);
they are unset (None) here, and setting one is an error that names it.
"""

import importlib.util
import pathlib

import ml_collections
from ml_collections.config_dict import placeholder

from instructjax.tasks import FAMILIES

PRESETS = ("tiny", "quick", "full", "hf", "gold")
# The policy step: PPO with GAE, the group baselines on the same trainer (the `ppo` section), or DPO.
ALGORITHMS = ("ppo", "grpo", "rloo", "dpo")
# Families no training stage sees: the report's alignment tax (does training on the others cost these?).
HELDOUT_FAMILIES = ("min_sentences", "bullets")
TRAINED_FAMILIES = tuple(f for f in FAMILIES if f not in HELDOUT_FAMILIES)
# Families a ~64-token answer can meet (the long-form ones need more tokens than the demo samples).
SHORT_FAMILIES = ("max_words", "min_words", "max_sentences", "lowercase", "uppercase", "no_commas", "end_phrase",
                  "quoted", "include_keywords", "avoid_words", "title")
# Fields of the stage sections that the pipeline fills in (instructjax/pipeline/stages.py: `seed`, the
# exports later stages read, `init` or the SFT model, the earlier stages' files, the job's processes from
# `parallel`); unset (None) here.
_PROCESSES = ("parallel.multi_host", "parallel.coordinator_address", "parallel.num_processes", "parallel.process_id")
_INIT_AND_DATA = ("seed", "export", "init.source", "init.path", "init.preset", "init.tokenizer", "data.train_files",
                  *_PROCESSES)
PIPELINE_FIELDS = {"sft": _INIT_AND_DATA, "reward": _INIT_AND_DATA + ("normalize.data.train_files",),
                   "ppo": _INIT_AND_DATA + ("reward.path", "ptx.data.train_files", "advantage", "rollout.group_size"),
                   "dpo": _INIT_AND_DATA}


def _stage_config(stage: str, preset: str) -> ml_collections.ConfigDict:
    path = pathlib.Path(__file__).with_name(f"{stage}.py")
    spec = importlib.util.spec_from_file_location(f"instructjax_{stage}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def _sampling(k: int, temperature: float, max_new_tokens: int, batch_size: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.k = k  # completions per prompt
    c.temperature = temperature  # sampling temperature (0: greedy)
    c.top_p = 1.0  # nucleus sampling; 1.0: off
    c.max_new_tokens = max_new_tokens  # response budget
    c.batch_size = batch_size  # prompts per compiled sampling call
    c.dtype = ""  # sampling compute dtype; "": the model's
    return c


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"unknown pipeline preset {arg!r}: expected one of {PRESETS}")
    real = arg != "tiny"
    config = ml_collections.ConfigDict()
    config.seed = 0  # seeds the task prompts, every sampling stage and (via the stage configs) training
    config.algorithm = "ppo"  # the policy step: ppo | grpo | rloo (the `ppo` section's trainer) | dpo (`dpo`)
    config.group_size = 4  # grpo / rloo: responses per prompt (episodes per iteration: ppo.batch_size x this)
    config.rounds = 1  # rounds of comparisons -> reward model -> policy; each later round samples from the last policy

    # the pipeline as one job of several processes (each runs the same command; docs/pipeline.md): every stage
    # runs in them, the training stages with these `parallel` fields
    config.parallel = ml_collections.ConfigDict()
    config.parallel.multi_host = False  # join a multi-process job first (jax.distributed.initialize)
    config.parallel.coordinator_address = ""  # multi_host: process 0's HOST:PORT; "": from the cluster environment
    config.parallel.num_processes = -1  # multi_host: processes of the job; -1: from the cluster environment
    config.parallel.process_id = -1  # multi_host: this process's id in 0..num_processes-1; -1: from the cluster

    config.init = ml_collections.ConfigDict()  # the initial model (the same fields as a stage's init)
    config.init.source = "default" if real else "random"  # random | hf | gguf | default | workdir
    config.init.path = ""  # HF directory or GGUF file for source hf / gguf
    config.init.preset = "tiny"  # model preset of a random init
    config.init.tokenizer = "tiny"  # tokenizer of a random init

    config.task = ml_collections.ConfigDict()  # the default task: instructions with verifiable constraints
    config.task.seed = 0  # seed of the prompt templates
    config.task.num_sft = 256  # training prompts for demonstrations (K samples each)
    config.task.num_reward = 256  # training prompts for comparisons
    config.task.num_ppo = 512  # training prompts for PPO
    config.task.num_validation = 64  # validation prompts
    config.task.num_test = 200  # held-out test prompts (topics disjoint from training)
    config.task.families = SHORT_FAMILIES if real else TRAINED_FAMILIES  # constraint families of every prompt set
    config.task.max_constraints = 2  # constraints per prompt (1 or 2)
    config.task.heldout_families = HELDOUT_FAMILIES  # families kept out of every training stage (alignment tax)
    config.task.num_heldout = 200  # test prompts of the held-out families (test topics); 0: none

    config.demonstrations = _sampling(k=2 if real else 8, temperature=0.8, max_new_tokens=64, batch_size=32)
    config.demonstrations.files = ()  # JSONL demonstrations of your own; (): made from K samples (source)
    config.demonstrations.source = "edit" if real else "best_of_k"  # edit: best sample edited to pass | best_of_k: as is
    config.demonstrations.require_pass = True  # best_of_k: keep the best sample only if it meets every constraint
    config.demonstrations.require_eos = True  # best_of_k: pick among the samples that ended with EOS (finished answers)

    config.comparisons = _sampling(k=4, temperature=1.0, max_new_tokens=64, batch_size=32)
    config.comparisons.labeler = "task"  # task: the default task's labeler | human: experiments/label.py
    config.comparisons.quality_decimals = 1  # task labeler: quality compared at this rounding (ties below it)

    config.ptx_corpus = ml_collections.ConfigDict()  # pretraining text for PPO-ptx
    config.ptx_corpus.source = "stdlib"  # stdlib: docstrings of Python's standard library | none
    config.ptx_corpus.max_records = 4000  # docstrings kept; 0: all
    config.ptx_corpus.min_chars = 200  # shorter docstrings are skipped
    config.ptx_corpus.num_heldout = 200  # docstrings kept out of PPO-ptx: the policies' held-out perplexity

    config.ppo_ptx = ml_collections.ConfigDict()  # round 1's policy step again with the pretraining loss (not DPO)
    config.ppo_ptx.gamma = 1.0  # its pretraining-loss coefficient (InstructGPT eq. 2: 27.8); 0: no PPO-ptx run

    config.evaluation = _sampling(k=1, temperature=0.0, max_new_tokens=64, batch_size=40)
    # evaluation.dtype is the compute dtype of every forward that compares policies (sampling, RM scores, KL,
    # perplexity), whatever dtype each policy was trained or exported in
    config.evaluation.report_samples = 12  # test prompts shown side by side in report.md
    config.evaluation.perplexity_max_len = 256  # tokens of each held-out docstring scored for perplexity
    config.evaluation.kl_prompts = 0  # the first N test prompts on which KL to SFT is sampled; 0: all of them
    config.evaluation.compare = ()  # other runs' policies evaluated beside this run's: "NAME=DIR" (DIR: a stage folder)
    config.evaluation.elo_bootstrap = 1000  # resamples of the test prompts for the Elo ratings' 95% intervals
    config.evaluation.elo_prior_ties = 1.0  # virtual ties between every two policies in the Elo fit (keeps it finite)

    stage_preset = "smollm2" if real else "tiny"
    config.sft = _stage_config("sft", stage_preset)
    config.reward = _stage_config("reward", stage_preset)
    config.ppo = _stage_config("ppo", stage_preset)
    config.dpo = _stage_config("dpo", stage_preset)
    for stage, fields in PIPELINE_FIELDS.items():
        for field in fields:
            section, _, name = f"{stage}.{field}".rpartition(".")
            config[section][name] = placeholder(type(config[section][name]))

    if arg == "tiny":
        config.task.num_sft, config.task.num_reward, config.task.num_ppo = 32, 32, 32
        config.task.num_validation, config.task.num_test, config.task.num_heldout = 8, 16, 16
        config.demonstrations.k, config.demonstrations.max_new_tokens = 2, 16
        config.demonstrations.require_pass = config.demonstrations.require_eos = False
        config.demonstrations.batch_size = config.comparisons.batch_size = config.evaluation.batch_size = 16
        config.comparisons.max_new_tokens = config.evaluation.max_new_tokens = 16
        config.ptx_corpus.max_records, config.ptx_corpus.num_heldout = 64, 16
        config.sft.num_steps, config.reward.num_steps, config.ppo.num_steps, config.dpo.num_steps = 8, 8, 2, 8
        config.dpo.eval.every_steps = 0
        config.sft.eval.every_steps = config.reward.eval.every_steps = 0
        config.reward.normalize.max_examples = 16
        config.ppo.reward.source = "model"
        config.ppo.rollout.penalize_no_eos = True
        config.ppo.value.init = "reward"
        config.ppo.samples.every_steps = config.ppo.eval.every_steps = 1
        config.ppo.data.max_prompt_len = 320  # byte-level tokenizer: a token per character
        config.sft.data.max_len = config.reward.data.max_len = config.dpo.data.max_len = 400
    else:
        _real_model_settings(config, arg)
    return config


def _real_model_settings(config: ml_collections.ConfigDict, arg: str) -> None:
    """SmolLM2-sized settings: bf16 compute, short answers, a few minutes per training stage."""
    if arg == "hf":
        config.init.source = "hf"
    for c in (config.demonstrations, config.comparisons, config.evaluation):
        c.dtype = "auto"  # bfloat16 where bf16 compute is native, else float32 (resolve_dtypes)
    sft, reward, ppo, dpo = config.sft, config.reward, config.ppo, config.dpo
    sft.num_steps, sft.num_epochs = 0, 2.0
    sft.batch_size, sft.microbatches = 16, 1
    sft.optim.lr = 2e-5
    sft.model.dropout_rate = 0.0
    sft.data.max_len = 160
    sft.eval.every_steps = 0
    sft.checkpoint.every_steps = 20

    reward.num_steps, reward.num_epochs = 0, 1.0
    reward.batch_size, reward.microbatches = 8, 1
    reward.model.scan_layers = False
    reward.model.frozen_layers = 20  # train the top 10 blocks and the head: the backward costs a third
    reward.optim.lr = 5e-5
    reward.data.max_len = 144
    reward.data.validation_fraction = 0.1
    reward.data.max_completions = config.comparisons.k  # the K ranked here: no padding rows to score (preset: 9)
    reward.eval.every_steps = 20
    reward.checkpoint.every_steps = 20
    reward.normalize.max_examples = 128
    reward.normalize.batch_size = 32

    ppo.num_steps = 16
    ppo.batch_size = 32
    ppo.ppo.num_minibatches = 2
    ppo.optim.lr = 5e-5  # 1e-5 barely moved the policy in 16 iterations (KL to SFT 0.04 nats): docs/gold_reward.md
    ppo.model.frozen_layers = 20  # update the top 10 blocks, the (tied) embeddings and the value head
    ppo.value.init = "shared"  # a value head on the policy trunk: one network to update (half the work)
    ppo.ppo.vf_coef = 0.1
    ppo.rollout.max_new_tokens = 64
    ppo.rollout.dtype = "auto"
    ppo.data.max_prompt_len = 96  # the default task's prompts: at most 84 tokens in the chat template
    ppo.ptx.batch_size = 8
    ppo.ptx.max_len = 128
    ppo.checkpoint.every_steps = 4
    ppo.samples.every_steps = 4
    ppo.eval.every_steps = 4  # validation pass rate and RM score along the run (the over-optimisation plot)

    dpo.num_steps, dpo.num_epochs = 0, 1.0  # one pass over the comparisons, on the reward stage's rows
    dpo.batch_size, dpo.microbatches = 8, 1
    dpo.model.scan_layers = False
    dpo.model.frozen_layers = 20  # the top 10 blocks, as PPO
    dpo.optim.lr = 5e-6
    dpo.data.max_len = reward.data.max_len
    dpo.data.max_completions = config.comparisons.k
    dpo.eval.every_steps = 0
    dpo.checkpoint.every_steps = 20
    if arg in ("quick", "gold"):  # make demo's 30 minutes hold one RL run: PPO-ptx beside it in `full`
        config.ppo_ptx.gamma = 0.0
        config.task.num_heldout = 100
        config.evaluation.perplexity_max_len = 128
        config.evaluation.kl_prompts = 100
        ppo.eval.every_steps = 8
    if arg == "gold":  # the gold-reward diagnostic: PPO against the task's own checker, no reward model
        ppo.reward.source = "function"
        ppo.reward.function = "instructjax.tasks.rewards:constraint_fraction"
    if arg == "full":
        config.task.num_sft = config.task.num_reward = 1024
        config.task.num_ppo = 2048
        config.task.num_test = 500
        sft.num_epochs = 3.0
        ppo.num_steps = 64
        ppo.batch_size = 64
        ppo.ppo.num_minibatches = 4
