"""TRL 1.12.0's PPO (`trl.experimental.ppo.PPOTrainer`) side of benchmarks/ppo.py: run with the
.venv-trl112 python (`make .venv-trl112`), which has no instructjax. benchmarks/ppo.py writes the
models and prompts and calls this script; it prints one JSON line of per-iteration seconds.

    ACCELERATE_MIXED_PRECISION=bf16 .venv-trl112/bin/python benchmarks/ppo_trl.py --policy DIR --reward DIR \\
        --prompts FILE [--new-tokens 64 --minibatches 4 --iterations 3 --threads 2]

Timing, from hooks on the trainer module: generation = iteration start to the end of
`batch_generation`; scoring = to the first forward of the policy-and-value wrapper (the update);
update = to `on_step_end`.
"""

import argparse
import json
import os
import tempfile
import time

import torch
import transformers
import trl
from datasets import Dataset
from trl.experimental.ppo import PPOConfig, PPOTrainer, ppo_trainer


def timing_hooks(events: list, shapes: list, bf16_generation: bool):
    """Record (name, time) events around TRL's generation, its first update forward and each step end,
    and the (prompt, response) widths of each rollout batch."""
    generation, forward = ppo_trainer.batch_generation, ppo_trainer.forward

    def timed_generation(model, queries, *args, **kwargs):
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16_generation):
            query_responses, logits = generation(model, queries, *args, **kwargs)
        events.append(("generated", time.perf_counter()))
        shapes.append((queries.shape[1], query_responses.shape[1] - queries.shape[1]))
        return query_responses, logits

    def timed_forward(model, *args, **kwargs):
        if isinstance(model, ppo_trainer.PolicyAndValueWrapper) and events[-1][0] == "generated":
            events.append(("update", time.perf_counter()))
        return forward(model, *args, **kwargs)

    ppo_trainer.batch_generation, ppo_trainer.forward = timed_generation, timed_forward

    class StepEnd(transformers.TrainerCallback):
        def on_train_begin(self, *_, **__):
            events.append(("start", time.perf_counter()))

        def on_step_end(self, *_, **__):
            events.append(("end", time.perf_counter()))

    return StepEnd()


def iterations(events: list) -> list[dict]:
    """Per-iteration seconds from the (start|end, generated, update, end, ...) event times."""
    times = [t for _, t in events]
    out = []
    for i in range(0, len(times) - 1, 3):
        start, generated, update, end = times[i:i + 4]
        out.append({"generate_s": generated - start, "score_s": update - generated, "update_s": end - update,
                    "total_s": end - start})
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", required=True, help="HF causal-LM dir (policy and reference)")
    parser.add_argument("--reward", required=True, help="HF *ForSequenceClassification dir (reward and value)")
    parser.add_argument("--prompts", required=True, help="JSON list of prompt token-id lists")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--f32-generation", action="store_true",
                        help="generate as TRL ships it (no autocast: float32 on CPU)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    bf16 = os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16"
    frozen_dtype = torch.bfloat16 if bf16 else torch.float32
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    if tokenizer.pad_token_id in (None, tokenizer.eos_token_id):  # TRL masks by pad id: keep EOS a real token
        tokenizer.pad_token = "<|endoftext|>"
    load_lm = transformers.AutoModelForCausalLM.from_pretrained
    load_scalar = transformers.AutoModelForSequenceClassification.from_pretrained
    policy, ref = load_lm(args.policy, dtype=torch.float32), load_lm(args.policy, dtype=frozen_dtype)
    value, reward = load_scalar(args.reward, dtype=torch.float32), load_scalar(args.reward, dtype=frozen_dtype)
    with open(args.prompts) as f:
        prompts = json.load(f)
    data = Dataset.from_dict({"input_ids": prompts})
    events, shapes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(
            output_dir=tmp, per_device_train_batch_size=len(prompts), gradient_accumulation_steps=1,
            num_mini_batches=args.minibatches, num_ppo_epochs=1, total_episodes=len(prompts) * args.iterations,
            local_rollout_forward_batch_size=len(prompts), response_length=args.new_tokens,
            stop_token=None, stop_token_id=None, missing_eos_penalty=None,  # no stop token: all new tokens forced
            temperature=1.0, kl_coef=0.02, learning_rate=1e-6, adam_beta2=0.95, lr_scheduler_type="constant",
            num_sample_generations=0, save_strategy="no", report_to=[], logging_steps=1, disable_tqdm=True,
            bf16=bf16, use_cpu=True, seed=0)
        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref,
                             reward_model=reward, value_model=value, train_dataset=data, eval_dataset=data,
                             callbacks=[timing_hooks(events, shapes, bf16 and not args.f32_generation)])
        trainer.train()
    print(json.dumps({"iterations": iterations(events), "prompt_and_response_tokens": shapes,
                      "pad_id": tokenizer.pad_token_id, "torch": torch.__version__,
                      "transformers": transformers.__version__, "trl": trl.__version__}))


if __name__ == "__main__":
    main()
