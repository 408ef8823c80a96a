"""The TFDS builder shared by the four record kinds: JSONL files in, ArrayRecord splits out.

The config names the files, how the validation split is made, and what is skipped. Its TFDS
config name carries a hash of the file contents and settings, so building again with unchanged
inputs finds the prepared dataset and skips the work. Every file is validated in full before
anything is written; the build summary (records per split and file, what was skipped and why)
is stored in the dataset's `metadata.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from instructjax.datasets import features as features_lib
from instructjax.datasets.jsonl import ALL_TIED_POLICIES, SKIP_REASONS, check_kind, read_jsonl

SUMMARY_KEY = "build_summary"


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """What to build: JSONL files of one record kind and how to split them."""

    kind: str  # demonstrations | comparisons | prompts | pretraining_text
    train_files: tuple[str, ...]  # JSONL files of the train split, read in order
    validation_files: tuple[str, ...] = ()  # JSONL files of the validation split (or use the fraction)
    validation_fraction: float = 0.0  # else: this fraction of the train records, drawn with split_seed
    split_seed: int = 0  # seed of the random validation draw
    max_chars: int = 0  # records with more characters of text are skipped (counted); 0 = no limit
    all_tied: str = "error"  # comparisons whose completions are all tied: "error" or "skip" (counted)
    name: str = "data"  # prefix of the TFDS config name (the content hash follows it)

    def __post_init__(self):
        check_kind(self.kind)
        for field in ("train_files", "validation_files"):
            files = getattr(self, field)
            if isinstance(files, (str, os.PathLike)):
                files = (files,)
            object.__setattr__(self, field, tuple(os.fspath(f) for f in files))
        if not self.train_files:
            raise ValueError("DatasetConfig.train_files is empty")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.validation_files and self.validation_fraction:
            raise ValueError("give validation_files or validation_fraction, not both")
        if self.all_tied not in ALL_TIED_POLICIES:
            raise ValueError(f"all_tied must be one of {ALL_TIED_POLICIES}, got {self.all_tied!r}")
        if self.max_chars < 0:
            raise ValueError(f"max_chars must be >= 0, got {self.max_chars}")


@dataclasses.dataclass(eq=False)
class JsonlBuilderConfig(tfds.core.BuilderConfig):
    """A TFDS builder config holding a DatasetConfig; see `builder_config`."""

    spec: DatasetConfig | None = None


def content_hash(config: DatasetConfig, version: str) -> str:
    """Hex digest of the file contents (with base names) and every setting that changes the output."""
    digest = hashlib.sha256()
    settings = dataclasses.asdict(config) | {"version": version, "train_files": None, "validation_files": None}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for group in (config.train_files, config.validation_files):
        digest.update(b"\x00group")
        for path in group:
            digest.update(os.path.basename(path).encode() + b"\x00")
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            digest.update(b"\x00file")
    return digest.hexdigest()


def builder_config(config: DatasetConfig, version: str) -> JsonlBuilderConfig:
    """The TFDS config for `config`: named `<name>-<first 12 hex digits of the content hash>`."""
    name = f"{config.name}-{content_hash(config, version)[:12]}"
    return JsonlBuilderConfig(name=name, version=version, spec=config,
                              description=f"{config.kind} from {len(config.train_files)} train file(s)")


class JsonlBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds one record kind from the JSONL files of its `JsonlBuilderConfig`."""

    KIND: ClassVar[str]

    def _log_download_bytes(self) -> None:
        """Nothing: TFDS would print "Downloading and preparing dataset" though nothing is downloaded;
        `datasets.build` logs what it built."""

    def _log_download_done(self) -> None:
        """Nothing: `datasets.build` logs the build and its summary."""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=features_lib.features(self.KIND), disable_shuffling=True,
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # the inputs are local files
        spec = self.builder_config.spec
        if spec is None or spec.kind != self.KIND:
            raise ValueError(f"{self.name}: build with a JsonlBuilderConfig whose spec.kind is {self.KIND!r}")
        scans = [_scan(spec, path, "train") for path in spec.train_files]
        scans += [_scan(spec, path, "validation") for path in spec.validation_files]
        empty = [s["path"] for s in scans if not s["lines"] and not any(s["skipped"].values())]
        if empty:
            raise ValueError(f"{self.KIND}: no records in {', '.join(empty)} (the file is empty or blank)")
        if spec.validation_fraction:
            _draw_validation(scans, spec.validation_fraction, spec.split_seed)
        summary = _summary(spec, self.builder_config.name, scans)
        for split, count in summary["splits"].items():
            if count == 0:
                raise ValueError(f"{self.KIND}: the {split} split has no records left\n{format_summary(summary)}")
        self.info.metadata[SUMMARY_KEY] = summary
        return {split: self._generate_examples(spec, [s for s in scans if split in s["keep"]], split)
                for split in summary["splits"]}

    def _generate_examples(self, spec: DatasetConfig, scans: list[dict[str, Any]], split: str):
        for scan in scans:
            keep = scan["keep"][split]
            for parsed in read_jsonl(self.KIND, scan["path"], max_chars=spec.max_chars, all_tied=spec.all_tied):
                if parsed.record is not None and parsed.line in keep:
                    source = f"{scan['path']}:{parsed.line}"
                    yield source, features_lib.encode(self.KIND, parsed.record, source)


def _scan(spec: DatasetConfig, path: str, split: str) -> dict[str, Any]:
    """Validates a whole file: the lines of its records, and what it skips and why."""
    lines, skipped = [], dict.fromkeys(SKIP_REASONS, 0)
    for parsed in read_jsonl(spec.kind, path, max_chars=spec.max_chars, all_tied=spec.all_tied):
        if parsed.skipped:
            skipped[parsed.skipped] += 1
        else:
            lines.append(parsed.line)
    return {"path": path, "split": split, "lines": lines, "skipped": skipped, "keep": {split: set(lines)}}


def _draw_validation(scans: list[dict[str, Any]], fraction: float, seed: int) -> None:
    """Moves round(fraction * n) train records, drawn with `seed`, to the validation split."""
    records = [(i, line) for i, scan in enumerate(scans) for line in scan["lines"]]
    n_val = max(1, round(fraction * len(records)))
    if n_val >= len(records):
        raise ValueError(f"validation_fraction={fraction} leaves no train records out of {len(records)}")
    chosen = np.random.default_rng(seed).permutation(len(records))[:n_val]
    for scan in scans:
        scan["keep"]["validation"] = set()
    for index in chosen:
        i, line = records[index]
        scans[i]["keep"]["train"].discard(line)
        scans[i]["keep"]["validation"].add(line)


def _summary(spec: DatasetConfig, config_name: str, scans: list[dict[str, Any]]) -> dict[str, Any]:
    splits = {"train": 0} | ({"validation": 0} if spec.validation_files or spec.validation_fraction else {})
    files = []
    for scan in scans:
        per_split = {split: len(lines) for split, lines in scan["keep"].items()}
        for split, count in per_split.items():
            splits[split] += count
        files.append({"path": scan["path"], "records": per_split, "skipped": scan["skipped"]})
    skipped = {reason: sum(f["skipped"][reason] for f in files) for reason in SKIP_REASONS}
    return {"kind": spec.kind, "config": config_name, "splits": splits, "skipped": skipped, "files": files}


def format_summary(summary: dict[str, Any]) -> str:
    """The build summary as a few readable lines."""
    splits = ", ".join(f"{split} {n}" for split, n in summary["splits"].items())
    skipped = ", ".join(f"{reason} {n}" for reason, n in summary["skipped"].items())
    lines = [f"{summary['kind']}/{summary['config']}: {splits} records; skipped: {skipped}"]
    for f in summary["files"]:
        kept = ", ".join(f"{split} {n}" for split, n in f["records"].items())
        skip = ", ".join(f"{reason} {n}" for reason, n in f["skipped"].items() if n)
        lines.append(f"  {f['path']}: {kept}" + (f"; skipped {skip}" if skip else ""))
    return "\n".join(lines)
