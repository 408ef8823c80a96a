"""PPO / PPO-ptx configs: `get_config("tiny")` (random tiny model, synthetic reward, seconds on CPU),
`get_config("smollm2")` (from SFT and RM runs of SmolLM2-135M-Instruct) and `get_config("instructgpt")`
(InstructGPT's settings, docs/formulas.md#instructgpt-defaults, for real hardware).

    python experiments/ppo.py --config=experiments/configs/ppo.py:tiny --workdir=runs/ppo
    python experiments/ppo.py --config=experiments/configs/ppo.py:smollm2 --workdir=runs/ppo \\
        --config.init.path=runs/sft --config.reward.path=runs/rm
    python experiments/ppo.py --config=experiments/configs/ppo.py:tiny --workdir=runs/ppo_fn \\
        --config.reward.source=function --config.reward.function=package.module:name
"""

import ml_collections

from instructjax.train.config import base_config, data_config

PRESETS = ("tiny", "smollm2", "instructgpt")


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"unknown ppo preset {arg!r}: expected one of {PRESETS}")
    config = base_config()
    config.num_steps = 100  # PPO iterations (rollout batches); num_epochs is not read (refused unless 0)
    config.batch_size = 64  # prompts per rollout batch (episodes: batch_size x rollout.group_size)
    config.microbatches = 1  # gradient accumulation inside each PPO minibatch
    # advantage: "gae" (PPO: GAE over a value function, value.*); group baselines over rollout.group_size
    # samples of each prompt, no value function: "grpo" (Shao et al. 2024), "drgrpo" (Liu et al. 2025),
    # "rloo" (Ahmadian et al. 2024); docs/ppo.md
    config.advantage = "gae"  # gae | grpo | drgrpo | rloo (see above)
    config.optim.schedule = "constant"  # policy learning-rate schedule (over all minibatch updates)
    config.optim.b2 = 0.95  # InstructGPT PPO Adam betas (0.9, 0.95)

    config.data = data_config("prompts")
    config.data.validation_fraction = 0.0  # every prompt is a training prompt
    config.data.max_prompt_len = 64  # tokens per (left-padded) prompt row
    config.data.truncation = "drop"  # too long: "drop" the prompt or "truncate_prompt" from the left (counted)
    config.data.chat_template = True  # render prompts with the tokenizer's chat template

    config.rollout = ml_collections.ConfigDict()
    config.rollout.max_new_tokens = 64  # response budget
    config.rollout.group_size = 1  # responses sampled per prompt (rows per iteration: batch_size x group_size)
    config.rollout.temperature = 1.0  # sampling temperature, also used in every logprob (docs/formulas.md#tempered-logprobs)
    config.rollout.top_k = 0  # 0: off
    config.rollout.top_p = 1.0  # 1.0: off
    config.rollout.penalize_no_eos = True  # responses without EOS get score - no_eos_penalty (docs/formulas.md#no-eos-penalty)
    config.rollout.no_eos_penalty = 1.0  # the penalty
    config.rollout.dtype = ""  # sampling compute dtype; "": the model's

    config.reward = ml_collections.ConfigDict()
    # reward.source: "model" (reward.path), "function" (reward.function), "model+function" (their weighted
    # sum), "random" (a random reward model, tests) or "token_count" (synthetic); docs/ppo.md
    config.reward.source = "model"  # model | function | model+function | random | token_count (see above)
    config.reward.path = ""  # a reward workdir or an exported reward model
    config.reward.function = ""  # "package.module:name" of fn(prompts, responses) -> scores; several: comma-separated
    config.reward.weights = ()  # one weight per source in order (the model first, then the functions); (): all 1.0
    config.reward.token_id = 0  # token_count: the token whose occurrences in the response are the score
    config.reward.dtype = ""  # frozen reward model's params and compute dtype (bfloat16); "": the policy's

    config.reference = ml_collections.ConfigDict()
    config.reference.dtype = ""  # frozen reference model's params and compute dtype; "": the policy's

    config.value = ml_collections.ConfigDict()
    # value.init: "reward": a separate value network initialised from the reward model (InstructGPT);
    # "policy": a separate copy of the policy trunk with a fresh scalar head; "shared": a fresh scalar head
    # on the policy's own trunk (Ziegler et al. 2019), trained with the policy optimizer (set ppo.vf_coef=0.1);
    # "reward" needs a reward model (reward.source model, model+function or random); a separate value network
    # takes model.* (remat_policy, scan_layers, frozen_layers, dtypes) as the policy does
    config.value.init = "reward"  # reward | policy | shared (see above)
    config.value.lr = 1e-5  # separate value network's learning rate (InstructGPT: 9e-6); shared: optim.lr

    config.kl = ml_collections.ConfigDict()
    config.kl.controller = "fixed"  # fixed (InstructGPT) | adaptive (Ziegler et al.)
    config.kl.init_coef = 0.02  # beta (InstructGPT: 0.02)
    config.kl.estimator = "k1"  # per-token KL estimator: k1 | k2 | k3
    config.kl.in_loss = False  # beta * KL as a loss term (GRPO, with k3) instead of a per-token reward penalty
    config.kl.target = 6.0  # adaptive: target KL per episode (nats)
    config.kl.horizon = 10000.0  # adaptive: horizon (episodes)

    config.ppo = ml_collections.ConfigDict()
    config.ppo.epochs = 1  # passes over each rollout batch (InstructGPT 1, Ziegler 4)
    config.ppo.num_minibatches = 8  # minibatches per pass (512 / 64 in InstructGPT)
    config.ppo.clip_eps = 0.2  # policy ratio clip
    config.ppo.value_clip = 0.2  # value clip
    config.ppo.vf_coef = 1.0  # value-loss weight; 1: separate value network (own optimizer); 0.1 with "shared"
    config.ppo.gamma = 1.0  # GAE discount
    config.ppo.lam = 0.95  # GAE lambda
    config.ppo.whiten_advantages = True  # advantage whitening over the batch's valid tokens
    config.ppo.whiten_rewards = False  # reward whitening (shift_mean=False)

    config.ptx = ml_collections.ConfigDict()
    config.ptx.gamma = 0.0  # PPO-ptx coefficient (InstructGPT: 27.8); 0: plain PPO
    config.ptx.batch_size = 64  # pretraining rows per rollout batch (split over the minibatches)
    config.ptx.max_len = 256  # tokens per pretraining row
    config.ptx.data = data_config("pretraining_text")  # JSONL of {"text"}; (): the shipped examples
    config.ptx.data.validation_fraction = 0.0

    config.samples = ml_collections.ConfigDict()
    config.samples.every_steps = 10  # write WORKDIR/samples/ppo_step_N.jsonl (prompt, response, score, KL); 0: never
    config.samples.rows = 8  # episodes in each table

    if arg == "tiny":  # random tiny model + byte tokenizer, synthetic reward: count of the letter "a" (id 100)
        config.num_steps = 6
        config.batch_size = 16
        config.optim.lr = 3e-3
        config.value.lr = 3e-3
        config.reward.source = "token_count"
        config.reward.token_id = 100
        config.rollout.penalize_no_eos = False
        config.value.init = "policy"
        config.data.max_prompt_len = 64
        config.rollout.max_new_tokens = 8
        config.ppo.num_minibatches = 2
        config.ppo.epochs = 2
        config.kl.init_coef = 0.05
        config.ptx.batch_size = 16
        config.ptx.max_len = 32
        config.checkpoint.every_steps = 2
        config.samples.every_steps = 3
    elif arg == "smollm2":  # SmolLM2-135M from an SFT run, reward from an RM run (experiments/reward.py)
        config.init.source = "workdir"
        config.init.path = "runs/sft"
        config.reward.path = "runs/rm"
        config.num_steps = 200
        config.batch_size = 64
        config.ppo.num_minibatches = 4
        config.optim.lr = 1e-6
        config.value.lr = 1e-5
        config.model.dtype = "auto"  # bfloat16 where bf16 compute is native, else float32
        config.rollout.max_new_tokens = 64
        config.checkpoint.every_steps = 20
    else:  # InstructGPT (appendix C): 256k episodes, batch 512, minibatch 64, 1 epoch, beta 0.02, ptx 27.8
        config.init.source = "workdir"
        config.init.path = "runs/sft"
        config.reward.path = "runs/rm"
        config.num_steps = 500  # 256k episodes / 512
        config.batch_size = 512
        config.ppo.num_minibatches = 8
        config.ppo.epochs = 1
        config.optim.lr = 9e-6
        config.value.lr = 9e-6
        config.kl.init_coef = 0.02
        config.ptx.gamma = 27.8
        config.ptx.batch_size = 4096  # 8x the RL episodes
        config.ptx.max_len = 512
        config.model.dtype = "auto"  # bfloat16 where bf16 compute is native, else float32
        config.model.scan_layers = True
        config.rollout.max_new_tokens = 256
        config.data.max_prompt_len = 512
        config.checkpoint.every_steps = 10
    return config
