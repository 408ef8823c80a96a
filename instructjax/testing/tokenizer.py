"""A real byte-level tokenizer small enough for the `tiny` model preset (vocab 320)."""

import tokenizers
from tokenizers import AddedToken, decoders, models

from instructjax.tokenizers import (Tokenizer, byte_level_pre_tokenizer, bytes_to_unicode,
                                    special_tokens_processor)

# Ids 0, 1, 2 as in SmolLM2; the 256 bytes follow.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer() -> Tokenizer:
    """Byte-level tokenizer with no merges: 3 ChatML specials + 256 bytes = 259 ids.

    eos = pad = `<|im_end|>` and bos = `<|im_start|>` like SmolLM2; every text round-trips.
    """
    byte_symbols = [bytes_to_unicode()[b] for b in range(256)]
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *byte_symbols])}
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    backend.pre_tokenizer = byte_level_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    backend.post_processor = special_tokens_processor(None, None, backend)
    return Tokenizer(backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
                     unk_token="<|endoftext|>", chat_template=CHATML_TEMPLATE, model_max_length=2048,
                     source="tiny_tokenizer()")
