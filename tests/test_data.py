"""grain pipelines: masks, packing, comparisons, prompts, text, determinism, resume, sharding."""

import dataclasses
import functools
import json
import os
import subprocess
import sys
import textwrap

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from instructjax import data, datasets, losses, parallel
from instructjax.models import Transformer, get_preset
from instructjax.models.functional import init_params
from instructjax.testing import tiny_tokenizer
from instructjax.data.comparisons import comparison_example
from instructjax.data.loader import format_tally
from instructjax.data.packing import continuation_mask, segment_positions
from instructjax.data.render import left_padded
from instructjax.data.sft import sft_example
from instructjax.datasets.jsonl import KINDS

TOK = tiny_tokenizer()
EOS = TOK.eos_id


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tfds.disable_progress_bar()
    data_dir = tmp_path_factory.mktemp("data")
    return {kind: datasets.build(datasets.example_config(kind), data_dir) for kind in KINDS}


def demo(prompt, response, i=0):
    return {"prompt": prompt, "response": response, "source": f"mem:{i}"}


def ids(text):
    return TOK.encode(text)


def in_order(batch_size, **overrides):
    return data.LoaderConfig(batch_size=batch_size, shuffle=False, num_epochs=1, **overrides)


def take(loader, n):
    it = iter(loader)
    batches = [next(it) for _ in range(n)]
    it.close()
    return batches


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# -- SFT ------------------------------------------------------------------------------------------

def test_sft_loss_mask_is_exactly_the_response_and_eos():
    records = [demo("Say hi.", "Hi!", 0), demo([{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "2+2?"}], "4", 1)]
    (batch,) = list(data.sft_loader(records, TOK, data.SFTConfig(max_len=96), in_order(2)))
    for row, record in enumerate(records):
        prompt = ids(TOK.render_prompt(record["prompt"]))
        response = ids(record["response"]) + [EOS]
        n = len(prompt) + len(response)
        np.testing.assert_array_equal(batch["tokens"][row, :n], prompt + response)
        assert batch["loss_mask"][row].tolist() == [False] * len(prompt) + [True] * len(response) + [False] * (96 - n)
        assert batch["attention_mask"][row].tolist() == [True] * n + [False] * (96 - n)
        assert batch["segment_ids"][row].tolist() == [1] * n + [0] * (96 - n)
        assert batch["positions"][row, :n].tolist() == list(range(n))
        assert TOK.decode(batch["tokens"][row][batch["loss_mask"][row]], skip_special_tokens=False) == \
            record["response"] + "<|im_end|>"


def test_sft_loss_on_all_tokens_skips_only_the_first():
    (batch,) = list(data.sft_loader([demo("Q?", "A.")], TOK, data.SFTConfig(max_len=64, loss_on="all"), in_order(1)))
    real = batch["attention_mask"][0]
    assert batch["loss_mask"][0].tolist() == (real & (np.arange(64) > 0)).tolist()


def test_sft_truncation_drops_or_cuts_the_prompt_from_the_left_and_counts():
    long_prompt = "x" * 80
    records = [demo(long_prompt, "ok", 0), demo("short", "ok", 1), demo("p", "r" * 70, 2)]
    it = iter(data.sft_loader(records, TOK, data.SFTConfig(max_len=64), in_order(3)))
    (batch,) = list(it)
    assert it.stats == {"records": 3, "truncated": 0, "dropped_overlong": 2}
    assert format_tally(it.stats) == "dropped 2 of 3 records read; 2 longer than data.max_len tokens; 0 prompts truncated"
    assert batch["attention_mask"].any(-1).tolist() == [True, False, False]  # one record, two padding rows

    it = iter(data.sft_loader(records, TOK, data.SFTConfig(max_len=64, truncation="truncate_prompt"), in_order(3)))
    (batch,) = list(it)
    assert it.stats == {"records": 3, "truncated": 1, "dropped_overlong": 1}  # the response alone is too long
    prompt, response = ids(TOK.render_prompt(long_prompt)), ids("ok") + [EOS]
    assert batch["tokens"][0].tolist() == prompt[len(prompt) + len(response) - 64:] + response
    assert batch["loss_mask"][0].sum() == len(response)


def test_packing_keeps_examples_apart_and_restarts_positions():
    rng = np.random.default_rng(0)
    records = [demo(f"q{i} " + "w" * int(rng.integers(1, 30)), "a" * int(rng.integers(1, 20)), i) for i in range(24)]
    expected = {}
    for r in records:
        item = sft_example(r, TOK, data.SFTConfig(max_len=128))
        expected[tuple(item.element["tokens"])] = item.element["loss_mask"]
    batches = list(data.sft_loader(records, TOK, data.SFTConfig(max_len=128, pack=True), in_order(4)))
    seen = []
    for batch in batches:
        for row in range(4):
            segments = batch["segment_ids"][row]
            assert (batch["attention_mask"][row] == (segments > 0)).all()
            for s in set(segments.tolist()) - {0}:
                where = segments == s
                assert where.nonzero()[0].tolist() == list(range(where.argmax(), where.argmax() + where.sum()))
                tokens = tuple(batch["tokens"][row][where].tolist())
                assert batch["positions"][row][where].tolist() == list(range(len(tokens)))
                assert batch["loss_mask"][row][where].tolist() == expected[tokens]
                assert not batch["loss_mask"][row][where][0]  # nothing predicts a segment's first token
                seen.append(tokens)
    assert sorted(seen) == sorted(expected)  # every example exactly once
    assert sum(b["segment_ids"].max(-1).sum() for b in batches) == 24


def test_packed_logits_equal_each_example_alone():
    cfg = get_preset("tiny")
    shapes = jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))  # no eager init: fast
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: (0.1 * rng.standard_normal(x.shape)).astype(x.dtype), shapes)
    records = [demo("first prompt", "one", 0), demo("second", "two two", 1), demo("3rd", "three", 2)]
    config = data.SFTConfig(max_len=160)
    (packed,) = list(data.sft_loader(records, TOK, dataclasses.replace(config, pack=True), in_order(1)))
    (alone,) = list(data.sft_loader(records, TOK, config, in_order(3)))
    assert packed["segment_ids"].max() == 3
    batch = {k: np.concatenate([packed[k], alone[k]]) for k in packed}  # one forward, one compile
    logits = jax.jit(Transformer(cfg).apply)({"params": params}, batch["tokens"], batch["positions"],
                                             batch["attention_mask"], segment_ids=batch["segment_ids"])
    for s in (1, 2, 3):
        where = batch["segment_ids"][0] == s
        row = 1 + [tuple(t) for t in alone["tokens"][:, :where.sum()].tolist()].index(
            tuple(batch["tokens"][0][where].tolist()))
        np.testing.assert_allclose(logits[0][where], logits[row][:where.sum()], atol=1e-5)


# -- comparisons ----------------------------------------------------------------------------------

def test_comparison_with_k4_yields_six_ordered_pairs_and_ties_are_dropped():
    record = {"prompt": "Pick.", "completions": ["best", "second", "third", "worst"], "ranking": [0, 1, 2, 3],
              "source": "mem:0"}
    element = comparison_example(record, TOK, data.ComparisonConfig(max_len=64, max_completions=5)).element
    pairs = losses.ordered_pair_mask(element["ranks"], element["valid"])
    assert pairs.shape == (5, 5) and pairs.sum() == 6
    assert sorted(zip(*pairs.nonzero())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]

    tied = losses.ordered_pair_mask(np.array([0, 0, 1, 2]), np.ones(4, bool))
    assert tied.sum() == 5 and not tied[0, 1] and not tied[1, 0]
    batched = losses.ordered_pair_mask(np.array([[1, 0], [0, 0]]), np.array([[True, True], [True, True]]))
    assert batched.sum((-1, -2)).tolist() == [1, 0]


def test_comparison_rows_hold_prompt_completion_eos_once_each():
    record = {"prompt": "Say hi.", "completions": ["Hi!", "Hello there!", "Go."], "ranking": [1, 0, 2],
              "source": "mem:0"}
    element = comparison_example(record, TOK, data.ComparisonConfig(max_len=64, max_completions=4)).element
    prompt = ids(TOK.render_prompt("Say hi."))
    for k, completion in enumerate(record["completions"]):
        row = prompt + ids(completion) + [EOS]
        assert element["tokens"][k, :len(row)].tolist() == row
        assert element["attention_mask"][k].sum() == len(row)
        assert element["response_mask"][k].nonzero()[0].tolist() == list(range(len(prompt), len(row)))
        assert element["last_index"][k] == len(row) - 1 and element["tokens"][k, len(row) - 1] == EOS
    assert element["valid"].tolist() == [True, True, True, False]
    assert element["ranks"][:3].tolist() == [1, 0, 2]
    assert element["index"] == -1  # a record read outside a loader has no source position
    assert not element["attention_mask"][3].any()


def test_comparison_loader_batches_and_counts(built):
    it = iter(data.comparison_loader(built["comparisons"].source("train"), TOK,
                                     data.ComparisonConfig(max_len=160, max_completions=4), in_order(4)))
    batches = list(it)
    assert batches[0]["tokens"].shape == (4, 4, 160) and batches[0]["ranks"].shape == (4, 4)
    n_five = sum(len(r["completions"]) == 5 for r in map(lambda r: datasets.decode("comparisons", r),
                                                         built["comparisons"].source("train")))
    assert it.stats["dropped_too_many_completions"] == n_five
    pairs = sum(losses.ordered_pair_mask(b["ranks"], b["valid"]).sum() for b in batches)
    assert pairs > 0
    index = [int(i) for b in batches for i, v in zip(b["index"], b["valid"].any(1)) if v]
    assert index == sorted(set(index)) and index[-1] < len(built["comparisons"].source("train"))  # source order
    chosen_rejected = [b for b in batches for i in range(4) if b["valid"][i].sum() == 2]
    assert chosen_rejected  # chosen/rejected records arrive as K = 2 with ranks [0, 1]


def test_comparison_elements_carry_their_record_index_and_record_arrays(built):
    source = built["comparisons"].source("train")
    extra = np.arange(len(source) * 2, dtype=np.float32).reshape(len(source), 2)
    batches = list(data.comparison_loader(source, TOK, data.ComparisonConfig(max_len=160, max_completions=5),
                                          in_order(4), record_arrays={"extra": extra}))
    real = np.concatenate([b["valid"].any(axis=1) for b in batches])
    index = np.concatenate([b["index"] for b in batches])[real]
    assert index.tolist() == sorted(index.tolist()) and len(set(index.tolist())) == len(index)
    for b in batches:
        rows = b["valid"].any(axis=1)
        np.testing.assert_array_equal(b["extra"][rows], extra[b["index"][rows]])
        first = datasets.decode("comparisons", source[int(b["index"][0])])
        assert b["valid"][0].sum() == len(first["completions"])


# -- prompts and pretraining text -----------------------------------------------------------------

def test_left_padded_fills_the_batch_with_the_last_row():
    tokens, mask = left_padded([[5, 6, 7], [8]], pad_id=0, size=3)
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [0, 0, 8], [0, 0, 8]])
    np.testing.assert_array_equal(mask, [[True] * 3, [False, False, True], [False, False, True]])
    tokens, mask = left_padded([[5]], pad_id=1, length=4)
    assert tokens.tolist() == [[1, 1, 1, 5]] and mask.tolist() == [[False, False, False, True]]


def test_prompts_are_left_padded_with_their_text():
    records = [{"prompt": "Hi?", "source": "mem:0"}, {"prompt": "x" * 50, "source": "mem:1"}]
    it = iter(data.prompt_loader(records, TOK, data.PromptConfig(max_prompt_len=40, truncation="truncate_prompt"),
                                 in_order(2)))
    (batch,) = list(it)
    first = ids(TOK.render_prompt("Hi?"))
    assert batch["tokens"][0, 40 - len(first):].tolist() == first
    assert batch["mask"][0].tolist() == [False] * (40 - len(first)) + [True] * len(first)
    assert batch["mask"][1].all()  # truncated from the left to exactly 40 tokens
    assert batch["tokens"][1].tolist() == ids(TOK.render_prompt("x" * 50))[-40:]
    assert batch["text"].tolist() == [TOK.render_prompt(r["prompt"]) for r in records]
    assert batch["source"].tolist() == ["mem:0", "mem:1"]
    assert it.stats == {"records": 2, "truncated": 1}


def test_prompt_batches_carry_record_indices_that_find_the_prompt_on_a_mesh():
    """Rows of global batches over 8 devices, past the first epoch: each row's `index` finds its own
    record (`source` agrees), and `prompt_texts` gives the prompt as the data has it (chat: the last
    user message)."""
    records = [{"prompt": f"Question {i}?", "source": f"mem:{i}"} for i in range(5)] + [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Tea?"}],
         "source": "mem:5"}]
    mesh = parallel.make_mesh((-1, 1, 1))
    it = iter(data.prompt_loader(records, TOK, data.PromptConfig(max_prompt_len=128),
                                 data.LoaderConfig(batch_size=8, seed=1), mesh))
    for _ in range(3):  # 24 rows of 6 records: four epochs
        batch = next(it)
        assert isinstance(batch["index"], jax.Array) and len(batch["index"].addressable_shards) == 8
        index = np.asarray(batch["index"])
        assert [records[i]["source"] for i in index] == batch["source"].tolist()
        want = ["Tea?" if i == 5 else f"Question {i}?" for i in index]
        assert data.prompt_texts(records, index) == want
    assert it.stats["records"] >= 24 and "dropped_overlong_prompt" not in it.stats
    with pytest.raises(ValueError, match="mem:9: a prompt of chat messages without a user message"):
        data.prompt_texts([{"prompt": [{"role": "system", "content": "Be brief."}], "source": "mem:9"}], [0])


def test_a_repeating_loader_that_drops_every_record_fails_instead_of_hanging():
    records = [{"prompt": "x" * 50, "source": f"mem:{i}"} for i in range(3)]
    loader = data.prompt_loader(records, TOK, data.PromptConfig(max_prompt_len=20),
                                dataclasses.replace(in_order(2), num_epochs=None))
    with pytest.raises(ValueError, match="whole epoch"):
        next(iter(loader))


def test_pretraining_rows_are_full_and_reassemble_the_text():
    records = [{"text": f"Passage {i}: " + "abc " * i, "source": f"mem:{i}"} for i in range(12)]
    batches = list(data.pretraining_loader(records, TOK, data.PretrainingConfig(max_len=32), in_order(2)))
    keys = ("tokens", "segment_ids", "positions", "loss_mask")
    rows = [tuple(b[k][r] for k in keys) for b in batches for r in range(2)]
    stream = [t for r in records for t in TOK.encode(r["text"]) + [EOS]]
    got = []
    for tokens, segments, positions, loss_mask in rows:
        got += tokens[segments > 0].tolist()
        np.testing.assert_array_equal(positions, segment_positions(segments))
        np.testing.assert_array_equal(loss_mask, continuation_mask(segments))
    assert got == stream
    assert all((b["segment_ids"] > 0).all() for b in batches[:-1])


def test_segment_helpers():
    segments = np.array([1, 1, 1, 2, 2, 3, 0, 0])
    assert segment_positions(segments).tolist() == [0, 1, 2, 0, 1, 0, 0, 0]
    assert continuation_mask(segments).tolist() == [False, True, True, False, True, False, False, False]


# -- order, state, hosts, devices -----------------------------------------------------------------

def test_same_seed_same_batches_other_seed_other_order(built):
    source = built["demonstrations"].source("train")

    def batches(seed):
        return take(data.sft_loader(source, TOK, data.SFTConfig(max_len=256, pack=True),
                                    data.LoaderConfig(batch_size=4, seed=seed)), 6)

    assert_same(batches(1), batches(1))
    assert not np.array_equal(batches(1)[0]["tokens"], batches(2)[0]["tokens"])


@pytest.mark.parametrize("kind", ["sft_packed", "comparisons", "pretraining_text"])
def test_restored_iterator_continues_with_exactly_the_next_batch(kind, built, tmp_path):
    loader_config = data.LoaderConfig(batch_size=4, seed=3)
    loader = {
        "sft_packed": lambda: data.sft_loader(built["demonstrations"].source("train"), TOK,
                                              data.SFTConfig(max_len=256, pack=True), loader_config),
        "comparisons": lambda: data.comparison_loader(built["comparisons"].source("train"), TOK,
                                                      data.ComparisonConfig(max_len=160, max_completions=5),
                                                      loader_config),
        "pretraining_text": lambda: data.pretraining_loader(built["pretraining_text"].source("train"), TOK,
                                                            data.PretrainingConfig(max_len=48), loader_config),
    }[kind]()
    ref = iter(loader)
    reference = [next(ref) for _ in range(14)]  # past the end of the first epoch
    ref.close()

    it = iter(loader)
    for _ in range(5):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as manager:
        manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    it.close()

    fresh = iter(loader)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as manager:
        manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    resumed = [next(fresh) for _ in range(9)]
    fresh.close()
    assert_same(resumed, reference[5:])
    assert fresh.stats == ref.stats  # the counters are part of the state


def test_worker_processes_give_the_same_batches(built):
    def batches(workers):
        return take(data.comparison_loader(built["comparisons"].source("train"), TOK,
                                           data.ComparisonConfig(max_len=160, max_completions=5),
                                           data.LoaderConfig(batch_size=4, seed=0, worker_count=workers)), 4)

    assert_same(batches(0), batches(1))


def test_hosts_get_disjoint_equal_shards(monkeypatch, built):
    source = built["prompts"].source("train")  # 40 records
    texts = []
    for host in range(3):
        monkeypatch.setattr(jax, "process_index", lambda h=host: h)
        monkeypatch.setattr(jax, "process_count", lambda: 3)
        monkeypatch.setattr(data.loader, "any_process", lambda flag: flag)  # one host's view: no collective
        loader = data.prompt_loader(source, TOK, data.PromptConfig(max_prompt_len=256),
                                    data.LoaderConfig(batch_size=6, seed=0, num_epochs=1))
        batches = list(loader)
        assert all(b["tokens"].shape == (2, 256) for b in batches)  # 6 rows over 3 hosts
        texts.append([s for b in batches for s in b["source"] if s])
        found = [source[int(i)]["source"].decode() for b in batches for i, m in zip(b["index"], b["mask"]) if m.any()]
        assert found == texts[-1]  # every host finds its rows' records by index
    assert [len(t) for t in texts] == [13, 13, 13]  # 40 records, 1 left out so that hosts stay equal
    assert len(set().union(*texts)) == 39
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        list(data.prompt_loader(source, TOK, data.PromptConfig(), data.LoaderConfig(batch_size=4)))



def test_a_finite_pass_goes_on_with_padding_while_another_process_has_batches(monkeypatch, built):
    source = built["prompts"].source("train")  # 40 records: 5 batches of 4 rows on each of 2 hosts
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    other_host = iter([True, False])  # the other host has one batch more (records dropped here only)
    monkeypatch.setattr(data.loader, "any_process", lambda flag: flag or next(other_host))
    loader = data.prompt_loader(source, TOK, data.PromptConfig(max_prompt_len=256),
                                data.LoaderConfig(batch_size=8, seed=0, num_epochs=1))
    batches = list(loader)
    assert len(batches) == 6 and all(b["tokens"].shape == (4, 256) for b in batches)
    assert all(b["mask"].any() for b in batches[:5]) and not batches[5]["mask"].any()


@pytest.mark.parametrize("num_epochs", [2, None])
def test_hosts_load_the_blocks_of_the_single_process_batches(monkeypatch, built, num_epochs):
    source = built["prompts"].source("train")  # 40 records: 2 epochs of 5 batches of 8 (4 per host)

    def sources(host, count):
        monkeypatch.setattr(jax, "process_index", lambda: host)
        monkeypatch.setattr(jax, "process_count", lambda: count)
        monkeypatch.setattr(data.loader, "any_process", lambda flag: flag)  # one host's view: no collective
        loader = data.prompt_loader(source, TOK, data.PromptConfig(max_prompt_len=256),
                                    data.LoaderConfig(batch_size=8, seed=0, num_epochs=num_epochs))
        return [list(b["source"]) for b in take(loader, 10)]

    one, hosts = sources(0, 1), [sources(h, 2) for h in range(2)]
    assert [a + b for a, b in zip(*hosts)] == one
    assert len(set(sum(one[:5], []))) == len(set(sum(one[5:], []))) == 40  # each epoch all records, reshuffled
    assert one[0] != one[5]

_EIGHT_DEVICES = textwrap.dedent("""
    import json, sys
    import jax
    from instructjax import data, datasets, parallel
    from instructjax.testing import tiny_tokenizer
    tok = tiny_tokenizer()
    mesh = parallel.make_mesh((2, 2, 2))
    out = {}
    sft = datasets.build(datasets.example_config("demonstrations"), sys.argv[1]).source("train")
    batch = next(iter(data.sft_loader(sft, tok, data.SFTConfig(max_len=256, pack=True),
                                      data.LoaderConfig(batch_size=8), mesh)))
    out["sft"] = {k: [list(v.shape), list(v.sharding.spec), len(v.addressable_shards)] for k, v in batch.items()}
    comps = datasets.build(datasets.example_config("comparisons"), sys.argv[1]).source("train")
    batch = next(iter(data.comparison_loader(comps, tok, data.ComparisonConfig(max_len=160, max_completions=5),
                                             data.LoaderConfig(batch_size=8), mesh)))
    out["tokens3d"] = [list(batch["tokens"].shape), list(batch["tokens"].sharding.spec),
                       list(batch["tokens"].addressable_shards[0].data.shape)]
    prompts = datasets.build(datasets.example_config("prompts"), sys.argv[1]).source("train")
    batch = next(iter(data.prompt_loader(prompts, tok, data.PromptConfig(max_prompt_len=128),
                                         data.LoaderConfig(batch_size=8), mesh)))
    out["text"] = [type(batch["text"]).__name__, list(batch["text"].shape), type(batch["tokens"]).__name__]
    print(json.dumps(out))
""")


def test_global_batches_on_eight_fake_devices(tmp_path):
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
                        "TFDS_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES, str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    spec = [["data", "fsdp"], None]  # rows split over data x fsdp = 4 ways, replicated over tensor
    assert out["sft"] == {k: [[8, 256], spec, 8] for k in
                          ("tokens", "positions", "segment_ids", "attention_mask", "loss_mask")}
    assert out["tokens3d"] == [[8, 5, 160], spec + [None], [2, 5, 160]]
    assert out["text"] == ["ndarray", [8], "ArrayImpl"]
