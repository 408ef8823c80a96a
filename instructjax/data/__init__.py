"""grain input pipelines: records -> tokenized, masked, packed, sharded batches with resumable state.

    loader = ij.data.sft_loader(built.source("train"), tok, ij.data.SFTConfig(max_len=256),
                                ij.data.LoaderConfig(batch_size=8, seed=0), mesh)
    it = iter(loader); batch = next(it); it.stats  # records read, truncated, dropped
"""

from instructjax.data.comparisons import ComparisonConfig, comparison_example, comparison_loader, ordered_pairs
from instructjax.data.loader import BatchIterator, Loader, LoaderConfig, Tokenized, global_batch
from instructjax.data.packing import continuation_mask, segment_positions
from instructjax.data.pretraining import PretrainingConfig, pretraining_loader, text_example
from instructjax.data.prompts import PromptConfig, prompt_example, prompt_loader, prompt_texts
from instructjax.data.sft import SFTConfig, sft_example, sft_loader

__all__ = [
    "BatchIterator", "ComparisonConfig", "Loader", "LoaderConfig", "PretrainingConfig", "PromptConfig", "SFTConfig",
    "Tokenized", "comparison_example", "comparison_loader", "continuation_mask", "global_batch", "ordered_pairs",
    "pretraining_loader", "prompt_example", "prompt_loader", "prompt_texts", "segment_positions", "sft_example",
    "sft_loader", "text_example",
]
