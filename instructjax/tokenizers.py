"""Tokenizer over HF `tokenizers`: special-token roles, batches with masks, chat templates.

Loads a Hugging Face tokenizer directory (`tokenizer.json` + `tokenizer_config.json`) or the
tokenizer a GGUF file describes in its metadata, and saves back to a directory that both this
class and `transformers.AutoTokenizer` load with identical ids and chat template.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gguf
import jinja2
import jinja2.ext
import jinja2.sandbox
import numpy as np
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

__all__ = ["Tokenizer", "tiny_tokenizer"]  # the rest: `from instructjax.tokenizers import name`

PathLike = str | os.PathLike
Message = Mapping[str, str]
Prompt = str | Sequence[Message]

# GGUF `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type).
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to the printable character byte-level vocabularies spell it with."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in chars):
        chars[b] = chr(256 + n)
    return chars


def byte_level_pre_tokenizer(split: str | None = None, *,
                             digits: bool = False) -> pre_tokenizers.PreTokenizer:
    """ByteLevel pre-tokenizer: GPT-2's regex, or the `split` regex instead; `digits` first isolates
    every digit (SmolLM2's own tokenizer.json)."""
    if split is not None:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if digits:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


# How text is split before byte-level BPE, by GGUF `tokenizer.ggml.pre` (as llama.cpp splits it).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GGUF_PRE_TOKENIZERS = {
    "default": {},
    "gpt2": {},
    "smollm": {"digits": True},
    "starcoder": {"digits": True},
    "llama-bpe": {"split": _LLAMA3_SPLIT},
    "llama3": {"split": _LLAMA3_SPLIT},
    "qwen2": {"split": _QWEN2_SPLIT},
}


def special_tokens_processor(bos_token: str | None, eos_token: str | None, backend: tokenizers.Tokenizer
                             ) -> processors.TemplateProcessing:
    """Post-processor adding `bos_token` before and `eos_token` after a sequence (either may be None)."""
    prefix, suffix = [bos_token] if bos_token else [], [eos_token] if eos_token else []
    return processors.TemplateProcessing(
        single=[*prefix, "$A", *suffix],
        pair=[*prefix, "$A", *suffix, *prefix, "$B:1", *suffix],
        special_tokens=[(t, backend.token_to_id(t)) for t in dict.fromkeys(prefix + suffix)])


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A prompt as chat messages: a plain string is one user message; messages are checked."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, Sequence) or not prompt:
        raise ValueError(f"a prompt is a string or a non-empty list of messages, got {prompt!r}")
    for i, message in enumerate(prompt):
        if not isinstance(message, Mapping) or not {"role", "content"} <= message.keys():
            raise ValueError(f"message {i} needs 'role' and 'content' keys, got {message!r}")
        if not isinstance(message["role"], str) or not isinstance(message["content"], str):
            raise ValueError(f"message {i}: 'role' and 'content' must be strings, got {message!r}")
    return [dict(m) for m in prompt]


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def compile_chat_template(template: str) -> jinja2.Template:
    """A chat template compiled in a sandbox, with the environment transformers renders it in."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)


class Tokenizer:
    """Text <-> token ids over an HF `tokenizers.Tokenizer`, with special-token roles and a chat template.

    Pad and EOS are distinct roles even when their ids coincide (SmolLM2): batches come with a mask,
    and the mask, not the id, says what is padding.
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None, unk_token: str | None = None,
                 chat_template: str | None = None, model_max_length: int | None = None,
                 source: str = "<in memory>"):
        self.backend = backend
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token, self.unk_token = pad_token, unk_token
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self.source = source
        for role, token in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token), ("unk", unk_token)):
            if token is not None and backend.token_to_id(token) is None:
                raise ValueError(f"{source}: {role} token {token!r} is not in the vocabulary")

    # -- loading and saving ------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: PathLike) -> Tokenizer:
        """Loads a Hugging Face tokenizer directory (`tokenizer.json`, optional `tokenizer_config.json`,
        `special_tokens_map.json`, `generation_config.json`, `chat_template.jinja`)."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: not a directory (expected one holding tokenizer.json)")
        tokenizer_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tokenizer_file):
            raise FileNotFoundError(f"{tokenizer_file}: missing; a tokenizer directory needs tokenizer.json")
        try:
            backend = tokenizers.Tokenizer.from_file(tokenizer_file)
        except Exception as e:  # the Rust parser raises a bare Exception
            raise ValueError(f"{tokenizer_file}: not a valid tokenizer.json: {e}") from e
        config = _read_json(os.path.join(path, "tokenizer_config.json"))
        tokens = {role: _token_content(config.get(f"{role}_token")) for role in ("bos", "eos", "pad", "unk")}
        special_map = _read_json(os.path.join(path, "special_tokens_map.json"))
        tokens.update({role: _token_content(special_map[f"{role}_token"])
                       for role in tokens if special_map.get(f"{role}_token") is not None})
        generation = _read_json(os.path.join(path, "generation_config.json"))
        for role in tokens:
            token_id = generation.get(f"{role}_token_id")
            if tokens[role] is None and token_id is not None:
                first_id = token_id[0] if isinstance(token_id, list) else token_id
                tokens[role] = backend.id_to_token(first_id)
        return cls(backend, **{f"{role}_token": token for role, token in tokens.items()},
                   chat_template=_read_chat_template(path, config),
                   model_max_length=_model_max_length(config.get("model_max_length")), source=path)

    @classmethod
    def from_gguf(cls, path: PathLike, reader: gguf.GGUFReader | None = None) -> Tokenizer:
        """Builds the tokenizer a GGUF file describes (byte-level BPE, `tokenizer.ggml.model == "gpt2"`).

        Pass the `gguf.GGUFReader` already open on `path`, if any, to read the file once.
        """
        source = os.fspath(path)
        if reader is None:
            if not os.path.isfile(source):
                raise FileNotFoundError(f"{source}: no such GGUF file")
            reader = gguf.GGUFReader(source)
        meta = _GGUFMetadata(reader, source)
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"{source}: tokenizer.ggml.model is {model!r}; "
                             "only byte-level BPE ('gpt2') is supported")
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in _GGUF_PRE_TOKENIZERS:
            raise ValueError(f"{source}: tokenizer.ggml.pre is {pre!r}; "
                             f"supported: {sorted(_GGUF_PRE_TOKENIZERS)}")
        tokens = meta.require("tokenizer.ggml.tokens")
        token_types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        merges = meta.require("tokenizer.ggml.merges")
        if len(token_types) != len(tokens):
            raise ValueError(f"{source}: {len(token_types)} token types for {len(tokens)} tokens")

        # Tokens already spelled in the byte alphabet are kept; any other is respelled byte by byte.
        spelling = bytes_to_unicode()
        alphabet = set(spelling.values())
        spelled = [t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode()) for t in tokens]
        pairs = [tuple(m.split(" ")) for m in merges]
        if bad := next((m for m, pair in zip(merges, pairs) if len(pair) != 2), None):
            raise ValueError(f"{source}: tokenizer.ggml.merges has {bad!r}, not two tokens joined by a space")
        backend = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(spelled)}, merges=pairs,
                                                  fuse_unk=False))
        backend.pre_tokenizer = byte_level_pre_tokenizer(**_GGUF_PRE_TOKENIZERS[pre])
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                    for t, token_type in zip(tokens, token_types)
                                    if token_type == _GGUF_CONTROL and set(t) <= alphabet])
        backend.add_tokens([AddedToken(t, normalized=False, special=False)
                            for t, token_type in zip(tokens, token_types)
                            if token_type == _GGUF_USER_DEFINED and set(t) <= alphabet])

        def token(key: str) -> str | None:
            token_id = meta.get(f"tokenizer.ggml.{key}")
            if token_id is None:
                return None
            if not 0 <= token_id < len(tokens):
                raise ValueError(f"{source}: tokenizer.ggml.{key} = {token_id} is outside the vocabulary")
            return spelled[token_id]

        bos, eos = token("bos_token_id"), token("eos_token_id")
        backend.post_processor = special_tokens_processor(
            bos if meta.get("tokenizer.ggml.add_bos_token", False) else None,
            eos if meta.get("tokenizer.ggml.add_eos_token", False) else None, backend)
        context = meta.get(f"{meta.get('general.architecture', '')}.context_length")
        return cls(backend, bos_token=bos, eos_token=eos, pad_token=token("padding_token_id"),
                   unk_token=token("unknown_token_id"), chat_template=meta.get("tokenizer.chat_template"),
                   model_max_length=context, source=source)

    def save_pretrained(self, path: PathLike) -> None:
        """Writes `tokenizer.json` and `tokenizer_config.json`, loadable here and by transformers."""
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        self.backend.save(os.path.join(path, "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token, "eos_token": self.eos_token,
            "pad_token": self.pad_token, "unk_token": self.unk_token,
            "model_max_length": self.model_max_length,
            "clean_up_tokenization_spaces": False,
            "chat_template": self.chat_template,
        }
        with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({k: v for k, v in config.items() if v is not None}, f, indent=2, ensure_ascii=False)
            f.write("\n")

    # -- vocabulary ----------------------------------------------------------------------------

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        """Id of the beginning-of-sequence token, if the tokenizer has one."""
        return self._id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-sequence token, if the tokenizer has one."""
        return self._id(self.eos_token)

    @property
    def pad_id(self) -> int:
        """Id written into padding: the pad token, else EOS, else 0 (masks, not ids, mark padding)."""
        for token_id in (self._id(self.pad_token), self.eos_id):
            if token_id is not None:
                return token_id
        return 0

    @property
    def unk_id(self) -> int | None:
        """Id of the unknown token, if the tokenizer has one."""
        return self._id(self.unk_token)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the special tokens (skipped by `decode(..., skip_special_tokens=True)`)."""
        return frozenset(i for i, t in self.backend.get_added_tokens_decoder().items() if t.special)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry for `token_id` (byte-level spelling), or None if out of range."""
        return self.backend.id_to_token(int(token_id))

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry, or None if it is not in the vocabulary."""
        return self.backend.token_to_id(token)

    # -- encoding and decoding ----------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special tokens written in the text are matched whole."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def encode_batch(self, texts: Sequence[str], *, max_len: int | None = None, padding_side: str = "left",
                     pad_to_multiple_of: int | None = None, truncation_side: str | None = None,
                     add_special_tokens: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Ids int32 [B, T] and mask bool [B, T] (True = real token), padding filled with `pad_id`.

        T is `max_len` when given (fixed shapes, no recompiles), else the longest sequence; then rounded
        up to `pad_to_multiple_of`. A text longer than `max_len` raises unless `truncation_side` is
        "left" (keep the end) or "right" (keep the start).
        """
        _check_side("padding_side", padding_side)
        if truncation_side is not None:
            _check_side("truncation_side", truncation_side)
        rows = [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]
        if max_len is not None:
            rows = [_truncate(row, max_len, truncation_side, i) for i, row in enumerate(rows)]
        length = max_len if max_len is not None else max(map(len, rows), default=0)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        ids = np.full((len(rows), length), self.pad_id, np.int32)
        mask = np.zeros((len(rows), length), bool)
        for i, row in enumerate(rows):
            span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
            ids[i, span], mask[i, span] = row, True
        return ids, mask

    def decode_batch(self, ids: np.ndarray | Sequence[Sequence[int]], mask: np.ndarray | None = None,
                     skip_special_tokens: bool = True) -> list[str]:
        """Texts of a batch of ids; with `mask`, only the positions where it is True."""
        rows = ids if mask is None else [np.asarray(r)[np.asarray(m, bool)] for r, m in zip(ids, mask)]
        return self.backend.decode_batch([[int(i) for i in r] for r in rows],
                                         skip_special_tokens=skip_special_tokens)

    # -- chat ----------------------------------------------------------------------------------

    def apply_chat_template(self, messages: Prompt, add_generation_prompt: bool = True,
                            tokenize: bool = False, **template_kwargs: Any) -> str | list[int]:
        """Renders a conversation with the checkpoint's own chat template (text, or ids with `tokenize`)."""
        if self.chat_template is None:
            raise ValueError(f"{self.source}: this tokenizer has no chat template "
                             "(tokenizer_config.json 'chat_template' or GGUF 'tokenizer.chat_template')")
        roles = {"bos": self.bos_token, "eos": self.eos_token, "pad": self.pad_token, "unk": self.unk_token}
        variables = {f"{role}_token": token for role, token in roles.items() if token is not None}
        text = compile_chat_template(self.chat_template).render(
            messages=as_messages(messages), add_generation_prompt=add_generation_prompt,
            **{**variables, **template_kwargs})
        return self.encode(text) if tokenize else text

    def render_prompt(self, prompt: Prompt) -> str:
        """A prompt (a string = one user message, or chat messages) rendered ready for the reply."""
        return self.apply_chat_template(prompt, add_generation_prompt=True)

    def __repr__(self) -> str:
        return (f"Tokenizer({self.source!r}, vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
                f"eos={self.eos_token!r}, pad={self.pad_token!r})")


# The tiny tokenizer: ids 0, 1, 2 are ChatML specials as in SmolLM2; the 256 bytes follow.
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer() -> Tokenizer:
    """A real byte-level tokenizer small enough for the `tiny` model preset (vocab 320): no merges,
    3 ChatML specials + 256 bytes = 259 ids.

    eos = pad = `<|im_end|>` and bos = `<|im_start|>` like SmolLM2; every text round-trips. Tests,
    notebooks and `init.tokenizer = "tiny"` configs use it (`instructjax.testing` re-exports it).
    """
    byte_symbols = [bytes_to_unicode()[b] for b in range(256)]
    vocab = {token: i for i, token in enumerate([*TINY_SPECIAL_TOKENS, *byte_symbols])}
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    backend.pre_tokenizer = byte_level_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in TINY_SPECIAL_TOKENS])
    backend.post_processor = special_tokens_processor(None, None, backend)
    return Tokenizer(backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
                     unk_token="<|endoftext|>", chat_template=CHATML_TEMPLATE, model_max_length=2048,
                     source="tiny_tokenizer()")


class _GGUFMetadata:
    """Typed access to a GGUF reader's key-value metadata, with errors naming the file and key."""

    def __init__(self, reader: gguf.GGUFReader, source: str):
        self.fields, self.source = reader.fields, source

    def get(self, key: str, default: Any = None) -> Any:
        field = self.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str) -> Any:
        if key not in self.fields:
            raise ValueError(f"{self.source}: GGUF metadata has no {key!r}")
        return self.get(key)


def _check_side(name: str, side: str) -> None:
    if side not in ("left", "right"):
        raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")


def _truncate(row: list[int], max_len: int, side: str | None, index: int) -> list[int]:
    """`row` cut to `max_len` ids from `side`; with no side an overlong row is an error."""
    if len(row) <= max_len:
        return row
    if side is None:
        raise ValueError(f"text {index} has {len(row)} tokens, more than max_len={max_len}; "
                         "pass truncation_side='left' or 'right' to truncate")
    return row[len(row) - max_len:] if side == "left" else row[:max_len]


def _read_json(file: str) -> dict[str, Any]:
    """A JSON object from `file`, {} when the file is absent; errors name the file and line."""
    if not os.path.isfile(file):
        return {}
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _read_chat_template(path: str, config: Mapping[str, Any]) -> str | None:
    """`chat_template.jinja` if present, else tokenizer_config.json's (a string, or named templates)."""
    jinja_file = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            return f.read()
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template}
        if "default" not in named:
            raise ValueError(f"{path}/tokenizer_config.json: chat_template lists no 'default' template")
        template = named["default"]
    return template


def _model_max_length(value: Any) -> int | None:
    """tokenizer_config.json's model_max_length; transformers writes ~1e30 for 'unset'."""
    return int(value) if isinstance(value, (int, float)) and value < 1e18 else None
