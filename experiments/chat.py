"""Chat with a checkpoint in the terminal, tokens streamed as they are sampled.

    python experiments/chat.py                                   # the embedded default model
    python experiments/chat.py --checkpoint=runs/demo/ppo/export # an HF directory (config + safetensors + tokenizer)
    python experiments/chat.py --checkpoint=model.gguf --prompt="What is the capital of France?"

Each reply is one call of `ij.sampling.generate` (the whole prefill + decode loop compiled once
per prompt-length bucket); the compiled loop hands every new token to the host through
`jax.debug.callback` (generate's `stream=`), so streaming costs no extra compilation and no Python
loop over decode steps. The conversation is kept as chat messages and re-rendered with the
checkpoint's chat template every turn. Commands: /reset forgets the conversation, /quit exits.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional

from absl import app, flags
import jax
import numpy as np

from instructjax import checkpoints, cpu_runtime, sampling
from instructjax.tokenizers import Tokenizer

CHECKPOINT = flags.DEFINE_string("checkpoint", "default",
                                 "'default' (embedded SmolLM2-135M-Instruct), an HF directory or a .gguf file.")
PROMPT = flags.DEFINE_string("prompt", None, "Answer this one message and exit (no interactive session).")
SYSTEM = flags.DEFINE_string("system", None, "Optional system message at the start of the conversation.")
MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 256, "Longest reply, in tokens.")
TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 is greedy.")
TOP_K = flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens only (0: all).")
TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: smallest set of tokens with this much mass.")
SEED = flags.DEFINE_integer("seed", 0, "Random seed of the sampler.")
DTYPE = flags.DEFINE_string("dtype", None, "Compute dtype override, e.g. bfloat16 (default: the checkpoint's).")

# Ids that end an assistant turn in common chat templates, besides the tokenizer's EOS.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def load_checkpoint(spec: str):
    """(cfg, params, tokenizer) from 'default', an HF directory or a GGUF file."""
    if spec == "default":
        return checkpoints.load_default_model()
    if spec.endswith(".gguf"):
        return checkpoints.load_gguf(spec)
    if os.path.isdir(spec):
        cfg, params = checkpoints.load_hf(spec)
        return cfg, params, Tokenizer.from_pretrained(spec)
    raise FileNotFoundError(f"--checkpoint={spec}: not 'default', an existing directory or a .gguf file")


def stop_ids(tok: Tokenizer) -> tuple[int, ...]:
    ids = {tok.eos_id} | {tok.token_to_id(t) for t in END_OF_TURN_TOKENS}
    return tuple(sorted(i for i in ids if i is not None))


class TextStream:
    """Decodes a growing list of ids and writes only the new text (held back while a UTF-8
    character is split across tokens)."""

    def __init__(self, tok: Tokenizer, write: Callable[[str], None]):
        self.tok, self.write, self.ids, self.printed = tok, write, [], ""

    def __call__(self, step: int, tokens: np.ndarray, active: np.ndarray) -> None:
        if not active[0]:
            return
        self.ids.append(int(tokens[0]))
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        self.write(text[len(self.printed):])
        self.printed = text


class Chat:
    """A conversation with one model: `reply(message)` appends the user message and the answer."""

    def __init__(self, cfg, params, tok: Tokenizer, *, system: Optional[str] = None, max_new_tokens: int = 256,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 dtype: Optional[str] = None):
        self.cfg, self.params, self.tok = cfg, params, tok
        self.system = system
        self.settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             eos_id=stop_ids(tok), pad_id=tok.pad_id, dtype=dtype)
        self.rng = jax.random.key(seed)
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def _prompt_ids(self) -> list[int]:
        """The conversation rendered for the next reply, dropping the oldest turns if it is too long."""
        budget = self.cfg.max_len - self.settings["max_new_tokens"]
        while True:
            ids = self.tok.encode(self.tok.apply_chat_template(self.messages, add_generation_prompt=True))
            first = 1 if self.system else 0
            if len(ids) <= budget or len(self.messages) - first <= 1:
                return ids[-budget:]
            del self.messages[first:first + 2]

    def reply(self, message: str, write: Optional[Callable[[str], None]] = None) -> str:
        """Answer `message`, streaming the text to `write` as it is sampled; returns the answer."""
        self.messages.append({"role": "user", "content": message})
        ids = np.asarray([self._prompt_ids()], np.int32)
        self.rng, rng = jax.random.split(self.rng)
        stream = TextStream(self.tok, write) if write is not None else None
        out = sampling.generate(self.cfg, self.params, ids, np.ones_like(ids, bool), rng=rng, stream=stream,
                                **self.settings)
        answer_ids = np.asarray(out.tokens)[0][np.asarray(out.mask)[0]]
        answer = self.tok.decode(answer_ids.tolist()).strip()
        if stream is not None and answer.startswith(stream.printed.strip()):
            write(answer[len(stream.printed.strip()):])  # whatever the stream held back
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv):
    del argv
    start = time.perf_counter()
    cfg, params, tok = load_checkpoint(CHECKPOINT.value)
    chat = Chat(cfg, params, tok, system=SYSTEM.value, max_new_tokens=MAX_NEW_TOKENS.value,
                temperature=TEMPERATURE.value, top_k=TOP_K.value, top_p=TOP_P.value, seed=SEED.value,
                dtype=DTYPE.value)
    print(f"[{CHECKPOINT.value}: {cfg.arch}, {cfg.num_params() / 1e6:.0f}M parameters, "
          f"loaded in {time.perf_counter() - start:.1f} s; the first reply of each prompt-length bucket "
          "includes compilation]", file=sys.stderr)
    if PROMPT.value is not None:
        chat.reply(PROMPT.value, write=_write)
        print()
        return
    print("Type a message; /reset starts over, /quit (or Ctrl-D) exits.", file=sys.stderr)
    while True:
        try:
            message = input("\nYou: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if message in ("/quit", "/exit"):
            return
        if message == "/reset":
            chat.reset()
            print("[conversation cleared]", file=sys.stderr)
            continue
        if not message:
            continue
        _write("Assistant: ")
        start = time.perf_counter()
        chat.reply(message, write=_write)
        print(f"\n[{time.perf_counter() - start:.1f} s]", file=sys.stderr)


if __name__ == "__main__":
    cpu_runtime.apply()  # XLA:CPU settings when jax will run on the CPU, before jax starts
    app.run(main)
