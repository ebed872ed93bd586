"""Reading preference records from JSONL, JSON, Parquet or a `datasets` dataset.

Pairwise records follow TRL's conventions: `{prompt, chosen, rejected}` where every field
is either a plain string or a list of chat messages `{"role": ..., "content": ...}`.
Every record is checked as it is read; a bad one raises `RecordError` naming the source,
the line (JSONL) or record index, and the field. Nothing is skipped silently, so a
malformed line can never shift the data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union

Messages = list[dict[str, str]]
Text = Union[str, Messages]

PAIRWISE_FIELDS = ("prompt", "chosen", "rejected")


class RecordError(ValueError):
    """A record that cannot be used, with where it is and which field is wrong."""

    def __init__(self, where: str, message: str, field: str | None = None):
        self.where, self.field = where, field
        prefix = f"{where}: field '{field}': " if field else f"{where}: "
        super().__init__(prefix + message)


@dataclass(frozen=True)
class PairwiseRecord:
    prompt: Text
    chosen: Text
    rejected: Text
    where: str  # "file.jsonl:7", for messages about this record later on

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


def iter_raw(path: str, split: str = "train") -> Iterator[tuple[str, Any]]:
    """(where, raw record) pairs from a file or dataset, in order."""
    lower = path.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        yield from _iter_jsonl(path)
    elif lower.endswith(".json"):
        yield from _iter_json_array(path)
    elif lower.endswith(".parquet"):
        yield from _iter_parquet(path)
    else:
        yield from _iter_datasets(path, split)


def _iter_jsonl(path: str) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if not line.strip():
                continue  # blank lines carry no record; numbering stays true to the file
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(where, f"not valid JSON ({exc.msg} at column {exc.colno})") \
                    from None


def _iter_json_array(path: str) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}:{exc.lineno}", f"not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise RecordError(path, f"expected a JSON array of records, got {type(data).__name__}")
    for index, record in enumerate(data):
        yield f"{path} record {index}", record


def _iter_parquet(path: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for index, record in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path} record {index}", record


def _iter_datasets(path: str, split: str) -> Iterator[tuple[str, Any]]:
    import datasets

    saved_markers = ("dataset_info.json", "dataset_dict.json")
    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in saved_markers):
        loaded = datasets.load_from_disk(path)  # a directory written by save_to_disk
        dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    elif os.path.exists(path) and not os.path.isdir(path):
        raise RecordError(path, "unknown file type: use .jsonl, .json or .parquet")
    else:
        dataset = datasets.load_dataset(path, split=split)  # a hub name or a data folder
    for index, record in enumerate(dataset):
        yield f"{path} [{split}] record {index}", record


def _check_text(where: str, field: str, value: Any) -> Text:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        for i, message in enumerate(value):
            if not isinstance(message, dict):
                raise RecordError(where, f"message {i} is {type(message).__name__}, expected "
                                  "an object with 'role' and 'content'", field)
            for key in ("role", "content"):
                if not isinstance(message.get(key), str):
                    raise RecordError(where, f"message {i} lacks a string '{key}'", field)
        return value
    kind = "an empty list" if value == [] else type(value).__name__
    raise RecordError(where, f"expected a string or a list of chat messages, got {kind}", field)


def parse_pairwise(where: str, raw: Any) -> PairwiseRecord:
    if not isinstance(raw, dict):
        raise RecordError(where, f"expected an object with fields {PAIRWISE_FIELDS}, "
                          f"got {type(raw).__name__}")
    for field in PAIRWISE_FIELDS:
        if field not in raw or raw[field] is None:
            raise RecordError(where, "missing", field)
    values = {f: _check_text(where, f, raw[f]) for f in PAIRWISE_FIELDS}
    kinds = {f: isinstance(v, list) for f, v in values.items()}
    if len(set(kinds.values())) > 1:
        odd = [f for f in PAIRWISE_FIELDS if kinds[f] != kinds["prompt"]][0]
        raise RecordError(where, "mixes plain strings and chat messages; give every field "
                          "in the same form", odd)
    return PairwiseRecord(where=where, **values)


def read_pairwise(path: str, split: str = "train") -> list[PairwiseRecord]:
    return [parse_pairwise(where, raw) for where, raw in iter_raw(path, split)]
