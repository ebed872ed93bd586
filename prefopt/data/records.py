"""Reading preference records from JSONL, JSON, Parquet or a `datasets` dataset.

Formats follow TRL's conventions; every prompt and completion is either a plain string or
a list of chat messages `{"role": ..., "content": ...}`, the role one of system, user,
assistant or tool:

- pairwise  `{prompt, chosen, rejected}` (optional number `margin`: preference strength)
- unpaired  `{prompt, completion, label}`, label a boolean: true = desirable
- ranked    `{prompt, completions: [...], ranks: [...]}`, integer ranks, lower is better,
            equal ranks are ties; or Nectar-style `{prompt, answers: [{answer, rank}]}`
- attributed `{prompt, response, attributes: {name: value}}` (SteerLM); the values are
            checked against the run's attribute schema (prefopt.data.attributes) when loaded
- prompts   `{prompt}`, for online objectives (REINFORCE, PPO), which sample completions

All become a `Record`: a prompt with its completions. Every record is checked as it is
read; a bad one raises `RecordError` naming the source, the line (JSONL) or record index,
and the field. Nothing is skipped silently, so a
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
ROLES = ("system", "user", "assistant", "tool")
"""The chat roles a message may have; chat templates render any other as literal text."""


class RecordError(ValueError):
    """A record that cannot be used, with where it is and which field is wrong."""

    def __init__(self, where: str, message: str, field: str | None = None):
        self.where, self.field = where, field
        prefix = f"{where}: field '{field}': " if field else f"{where}: "
        super().__init__(prefix + message)


@dataclass(frozen=True)
class Record:
    """A prompt with its completions and what the format says about them."""

    prompt: Text
    completions: tuple[Text, ...]  # pairwise: (chosen, rejected)
    where: str  # "file.jsonl:7", for messages about this record later on
    label: bool | None = None  # unpaired: is the completion desirable
    ranks: tuple[int, ...] | None = None  # ranked: lower is better; pairwise: (0, 1)
    margin: float | None = None  # pairwise: optional preference strength
    kind: str = "pairwise"  # pairwise | unpaired | ranked | attributed | prompts
    attributes: tuple[tuple[str, float], ...] | None = None  # attributed: (name, value)s

    def completion_field(self, index: int) -> str:
        """The record field that holds completion `index`, for error messages."""
        if self.kind == "pairwise":
            return ("chosen", "rejected")[index]
        if self.kind == "attributed":
            return "response"
        return "completion" if self.kind == "unpaired" else f"completions[{index}]"

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)

    @property
    def chosen(self) -> Text:
        return self.completions[0]

    @property
    def rejected(self) -> Text:
        return self.completions[1]


def pairwise_record(prompt: Text, chosen: Text, rejected: Text, where: str,
                    margin: float | None = None) -> Record:
    return Record(prompt, (chosen, rejected), where, ranks=(0, 1), margin=margin)


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
            if message["role"] not in ROLES:
                raise RecordError(where, f"message {i} has role {message['role']!r}; a role "
                                  f"is one of {', '.join(ROLES)}", field)
        return value
    kind = "an empty list" if value == [] else type(value).__name__
    raise RecordError(where, f"expected a string or a list of chat messages, got {kind}", field)


def _require(where: str, raw: Any, fields: tuple[str, ...]) -> None:
    if not isinstance(raw, dict):
        raise RecordError(where, f"expected an object with fields {fields}, "
                          f"got {type(raw).__name__}")
    for field in fields:
        if field not in raw or raw[field] is None:
            raise RecordError(where, "missing", field)


def _same_form(where: str, fields: dict[str, Text]) -> None:
    """Prompt and completions must all be strings or all be message lists."""
    kinds = {f: isinstance(v, list) for f, v in fields.items()}
    if len(set(kinds.values())) > 1:
        odd = [f for f in fields if kinds[f] != kinds["prompt"]][0]
        raise RecordError(where, "mixes plain strings and chat messages; give every field "
                          "in the same form", odd)


def parse_pairwise(where: str, raw: Any) -> Record:
    _require(where, raw, PAIRWISE_FIELDS)
    values = {f: _check_text(where, f, raw[f]) for f in PAIRWISE_FIELDS}
    _same_form(where, values)
    margin = raw.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise RecordError(where, f"expected a number, got {margin!r}", "margin")
    return pairwise_record(values["prompt"], values["chosen"], values["rejected"], where,
                           None if margin is None else float(margin))


def parse_unpaired(where: str, raw: Any) -> Record:
    _require(where, raw, ("prompt", "completion", "label"))
    values = {f: _check_text(where, f, raw[f]) for f in ("prompt", "completion")}
    _same_form(where, values)
    if not isinstance(raw["label"], bool):
        raise RecordError(where, f"expected a boolean (true = desirable), got {raw['label']!r}",
                          "label")
    return Record(values["prompt"], (values["completion"],), where, label=raw["label"],
                  kind="unpaired")


def _check_rank(where: str, field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(where, f"expected an integer rank, got {value!r}", field)
    return value


def parse_ranked(where: str, raw: Any) -> Record:
    if isinstance(raw, dict) and "answers" in raw and "completions" not in raw:
        return _parse_nectar(where, raw)
    _require(where, raw, ("prompt", "completions", "ranks"))
    prompt = _check_text(where, "prompt", raw["prompt"])
    completions, ranks = raw["completions"], raw["ranks"]
    if not isinstance(completions, list) or len(completions) < 2:
        raise RecordError(where, "a ranking needs a list of at least 2 completions", "completions")
    if not isinstance(ranks, list) or len(ranks) != len(completions):
        raise RecordError(where, f"expected a list of {len(completions)} ranks, one per "
                          f"completion, got {ranks!r}", "ranks")
    texts = tuple(_check_text(where, f"completions[{i}]", c) for i, c in enumerate(completions))
    _same_form(where, {"prompt": prompt, **{f"completions[{i}]": t for i, t in enumerate(texts)}})
    return Record(prompt, texts, where, kind="ranked",
                  ranks=tuple(_check_rank(where, f"ranks[{i}]", r) for i, r in enumerate(ranks)))


def _parse_nectar(where: str, raw: dict) -> Record:
    _require(where, raw, ("prompt", "answers"))
    prompt = _check_text(where, "prompt", raw["prompt"])
    answers = raw["answers"]
    if not isinstance(answers, list) or len(answers) < 2:
        raise RecordError(where, "a ranking needs a list of at least 2 answers", "answers")
    texts, ranks = [], []
    for i, answer in enumerate(answers):
        if not isinstance(answer, dict):
            raise RecordError(where, "expected an object {answer, rank}", f"answers[{i}]")
        for key in ("answer", "rank"):
            if answer.get(key) is None:
                raise RecordError(where, "missing", f"answers[{i}].{key}")
        texts.append(_check_text(where, f"answers[{i}].answer", answer["answer"]))
        ranks.append(_check_rank(where, f"answers[{i}].rank", answer["rank"]))
    _same_form(where, {"prompt": prompt,
                       **{f"answers[{i}].answer": t for i, t in enumerate(texts)}})
    return Record(prompt, tuple(texts), where, ranks=tuple(ranks), kind="ranked")


def parse_attributed(where: str, raw: Any) -> Record:
    """A response with attribute values; null values mean "not labelled". Names and ranges
    are checked against the schema later (`AttributeSchema.check`), which knows them."""
    _require(where, raw, ("prompt", "response", "attributes"))
    values = {f: _check_text(where, f, raw[f]) for f in ("prompt", "response")}
    _same_form(where, values)
    attributes = raw["attributes"]
    if not isinstance(attributes, dict):
        raise RecordError(where, "expected an object {name: value}, got "
                          f"{type(attributes).__name__}", "attributes")
    for name, value in attributes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RecordError(where, f"expected a number or null, got {value!r}",
                              f"attributes.{name}")
    return Record(values["prompt"], (values["response"],), where, kind="attributed",
                  attributes=tuple((str(k), v) for k, v in attributes.items()))


def parse_prompt(where: str, raw: Any) -> Record:
    """A prompt alone, for online objectives: they sample the completions themselves."""
    _require(where, raw, ("prompt",))
    return Record(_check_text(where, "prompt", raw["prompt"]), (), where, kind="prompts")


PARSERS = {"pairwise": parse_pairwise, "unpaired": parse_unpaired, "ranked": parse_ranked,
           "attributed": parse_attributed, "prompts": parse_prompt}


def read_records(path: str, fmt: str, split: str = "train") -> list[Record]:
    """Every record of `path` in format `fmt` (pairwise | unpaired | ranked | attributed |
    prompts), checked."""
    if fmt not in PARSERS:
        raise ValueError(f"no reader for {fmt!r} records; known: {sorted(PARSERS)}")
    parse = PARSERS[fmt]
    return [parse(where, raw) for where, raw in iter_raw(path, split)]


def read_pairwise(path: str, split: str = "train") -> list[Record]:
    return read_records(path, "pairwise", split)


def unpair(records: list[Record]) -> list[Record]:
    """Pairwise -> unpaired: each pair gives a desirable and an undesirable completion."""
    return [Record(r.prompt, (completion,), f"{r.where} ({side})", label=side == "chosen",
                   kind="unpaired")
            for r in records for side, completion in (("chosen", r.chosen),
                                                      ("rejected", r.rejected))]
