"""grain input pipelines: records -> tokenized, masked, packed, sharded batches with resumable state.

    loader = ij.data.sft_loader(built.source("train"), tok, ij.data.SFTConfig(max_len=256),
                                ij.data.LoaderConfig(batch_size=8, seed=0), mesh)
    it = iter(loader); batch = next(it); it.stats  # records read, truncated, dropped
"""

from instructjax.data.comparisons import ComparisonConfig, comparison_loader
from instructjax.data.loader import Loader, LoaderConfig
from instructjax.data.pretraining import PretrainingConfig, pretraining_loader
from instructjax.data.prompts import PromptConfig, prompt_loader, prompt_texts
from instructjax.data.sft import SFTConfig, sft_loader

__all__ = [
    "ComparisonConfig", "Loader", "LoaderConfig", "PretrainingConfig", "PromptConfig", "SFTConfig",
    "comparison_loader", "pretraining_loader", "prompt_loader", "prompt_texts", "sft_loader",
]
