"""A TFDS catalog dataset feeds prompts or pretraining text by name (a local fake: no network)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from instructjax import data, datasets
from instructjax.testing import tiny_tokenizer


class FakeCatalogReviews(tfds.core.GeneratorBasedBuilder):
    """Stands in for a catalog dataset such as imdb_reviews: a nested text feature and a label."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"review": {"body": tfds.features.Text()}, "label": np.int64}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"review": {"body": f"Review number {i}."}, "label": i % 2}


@pytest.fixture
def catalog_dir(tmp_path):
    FakeCatalogReviews(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    return tmp_path


def test_catalog_text_field_as_prompts_and_pretraining_text(catalog_dir):
    config = datasets.CatalogConfig("fake_catalog_reviews", "train[:4]", "review/body")
    records = list(datasets.catalog_source(config, catalog_dir))
    assert len(records) == 4
    assert {r["prompt"] for r in records} < {f"Review number {i}." for i in range(6)}
    assert all(r["source"].startswith("fake_catalog_reviews[train[:4]][") for r in records)
    texts = datasets.catalog_source(datasets.CatalogConfig("fake_catalog_reviews", "train", "review/body",
                                                           kind="pretraining_text"), catalog_dir)
    assert sorted(r["text"] for r in texts) == sorted(f"Review number {i}." for i in range(6))


def test_catalog_prompts_feed_the_prompt_pipeline(catalog_dir):
    source = datasets.catalog_source(datasets.CatalogConfig("fake_catalog_reviews", "train", "review/body"),
                                     catalog_dir)
    loader = data.prompt_loader(source, tiny_tokenizer(), data.PromptConfig(max_prompt_len=64),
                                data.LoaderConfig(batch_size=3, num_epochs=1))
    batches = list(loader)
    assert [b["tokens"].shape for b in batches] == [(3, 64), (3, 64)]
    assert sorted(t for b in batches for t in b["text"]) == sorted(
        f"<|im_start|>user\nReview number {i}.<|im_end|>\n<|im_start|>assistant\n" for i in range(6))


def test_catalog_errors_name_the_field(catalog_dir):
    with pytest.raises(KeyError, match="no field 'review/title'"):
        datasets.catalog_source(datasets.CatalogConfig("fake_catalog_reviews", "train", "review/title"),
                                catalog_dir)[0]
    with pytest.raises(TypeError, match="'label' is int"):
        datasets.catalog_source(datasets.CatalogConfig("fake_catalog_reviews", "train", "label"), catalog_dir)[0]
    with pytest.raises(ValueError, match="feeds"):
        datasets.CatalogConfig("x", "train", "text", kind="comparisons")
