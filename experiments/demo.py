"""`make demo`: load the embedded default model (SmolLM2-135M-Instruct) and answer one question.

Until the InstructGPT pipeline lands, this shows the model, tokenizer, chat template and
compiled sampler working end to end on the CPU.
"""

import time

from absl import app, flags
import jax
import numpy as np

import instructjax as ij

QUESTION = flags.DEFINE_string("question", "What is the capital of France?", "User message to answer.")
MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "Longest answer, in tokens.")


def main(argv):
    del argv
    start = time.perf_counter()
    cfg, params, tok = ij.checkpoints.load_default_model()
    print(f"Loaded SmolLM2-135M-Instruct ({cfg.num_params() / 1e6:.0f}M parameters) "
          f"in {time.perf_counter() - start:.1f} s")
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION.value}], add_generation_prompt=True)
    ids, mask = tok.encode_batch([prompt], padding_side="left")
    start = time.perf_counter()
    out = ij.sampling.generate(cfg, params, ids, mask, rng=jax.random.key(0), max_new_tokens=MAX_NEW_TOKENS.value,
                               temperature=0.0, eos_id=tok.eos_id)
    answer_ids = np.asarray(out.tokens[0])[np.asarray(out.mask[0])]
    print(f"User: {QUESTION.value}")
    print(f"Assistant: {tok.decode(answer_ids.tolist())}")
    print(f"({len(answer_ids)} tokens in {time.perf_counter() - start:.1f} s, compilation included)")


if __name__ == "__main__":
    app.run(main)
