"""Reading preference records from JSONL, JSON, Parquet or a `datasets` dataset.

Formats follow TRL's conventions; every prompt and completion is either a plain string or
a list of chat messages `{"role": ..., "content": ...}`, the role one of system, user,
assistant or tool:

- pairwise  `{prompt, chosen, rejected}` (optional number `margin`: preference strength);
            with no `prompt`, chosen and rejected whole conversations (TRL's implicit
            prompt): the messages both start with are the prompt; or, with no `prompt`,
            Anthropic-HH strings ("\\n\\nHuman: ...\\n\\nAssistant: ..."): their common start
            up to its last "\\n\\nAssistant:" is the prompt
- unpaired  `{prompt, completion, label}`, label a boolean: true = desirable
- ranked    `{prompt, completions: [...], ranks: [...]}`, integer ranks, lower is better,
            equal ranks are ties; or Nectar-style `{prompt, answers: [{answer, rank}]}`
- attributed `{prompt, response, attributes: {name: value}}` (SteerLM); the values are
            checked against the run's attribute schema (prefopt.data.attributes) when loaded
- prompts   `{prompt}`, for online objectives (REINFORCE, PPO), which sample completions;
            its other fields (a gold `answer`) are kept for reward functions

A string prompt whose completions are whole conversations that open with that prompt as
the user turn (the UltraFeedback-binarized shape) has the repeated turn taken off: the
prompt becomes that user message, the completions what follows it. Ranked records whose
completions are conversations may likewise leave out the prompt.

`columns` maps the format's fields to other column names of the source
(`{"chosen": "response_a"}`); `FIELDS` lists the fields each format reads.

All become a `Record`: a prompt with its completions. Every record is checked as it is
read; a bad one raises `RecordError` naming the source, the line (JSONL) or record index,
and the field. Nothing is skipped silently, so a
malformed line can never shift the data.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional, Union

Messages = list[dict[str, str]]
Text = Union[str, Messages]

PAIRWISE_FIELDS = ("prompt", "chosen", "rejected")
ROLES = ("system", "user", "assistant", "tool")
"""The chat roles a message may have; chat templates render any other as literal text."""


FIELDS = {"pairwise": ("prompt", "chosen", "rejected", "margin"),
          "unpaired": ("prompt", "completion", "label"),
          "ranked": ("prompt", "completions", "ranks", "answers"),
          "attributed": ("prompt", "response", "attributes"),
          "prompts": ("prompt",)}
"""The top-level fields each format reads: the names `data.columns` may map."""


@dataclass
class Columns:
    """`data.columns`: the source's column name for each field it names differently (a
    typed node, so that `data.columns.chosen=response_a` needs no `+` and a misspelt field
    is refused); the fields are those of every format (`FIELDS`)."""

    prompt: Optional[str] = None
    chosen: Optional[str] = None
    rejected: Optional[str] = None
    margin: Optional[str] = None
    completion: Optional[str] = None
    label: Optional[str] = None
    completions: Optional[str] = None
    ranks: Optional[str] = None
    answers: Optional[str] = None
    response: Optional[str] = None
    attributes: Optional[str] = None


class RecordError(ValueError):
    """A record that cannot be used, with where it is and which field is wrong; `column`
    names the source's column when `data.columns` maps the field to another name."""

    def __init__(self, where: str, message: str, field: str | None = None,
                 column: str | None = None):
        self.where, self.message, self.field, self.column = where, message, field, column
        named = f"field '{field}'" + (f" (column '{column}')" if column else "")
        prefix = f"{where}: {named}: " if field else f"{where}: "
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
    # prompts: the record's other fields (e.g. a gold `answer`), for reward functions
    extra: tuple[tuple[str, Any], ...] = ()

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


def iter_raw(path: str, split: str = "train", split_setting: str = "data.split"
             ) -> Iterator[tuple[str, Any]]:
    """(where, raw record) pairs from a file or dataset, in order. `split_setting` is the
    setting that chose `split`, named when the dataset has no such split."""
    lower = path.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        yield from _iter_jsonl(path)
    elif lower.endswith(".json"):
        yield from _iter_json_array(path)
    elif lower.endswith(".parquet"):
        yield from _iter_parquet(path)
    else:
        yield from _iter_datasets(path, split, split_setting)


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
            raise RecordError(f"{path}:{exc.lineno}", f"not valid JSON ({exc.msg} at column "
                              f"{exc.colno}){_json_lines_hint(path, exc)}") from None
    if not isinstance(data, list):
        raise RecordError(path, f"expected a JSON array of records, got {type(data).__name__}")
    # Counted from 1, as JSONL lines are: "record 3" is the third in the array.
    for index, record in enumerate(data, start=1):
        yield f"{path} record {index}", record


def _json_lines_hint(path: str, exc: json.JSONDecodeError) -> str:
    """The fix for a `.json` file that holds JSON Lines: its first line is a whole object,
    and the decoder stops at the second ("Extra data")."""
    if exc.msg != "Extra data" or exc.lineno < 2:
        return ""
    try:
        first = json.loads(exc.doc.splitlines()[0])
    except json.JSONDecodeError:
        return ""
    if not isinstance(first, dict):
        return ""
    stem = path[:-len(".json")] if path.lower().endswith(".json") else path
    return f"; it holds one record per line (JSON Lines): rename it to {stem}.jsonl"


def _iter_parquet(path: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for index, record in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path} record {index}", record


def _no_split(path: str, split: str, found, setting: str) -> RecordError:
    also = " (validation records: data.val_split=<name>)" if setting == "data.split" else ""
    return RecordError(path, f"has no split '{split}' (its splits: {', '.join(found)}): "
                       f"choose one with {setting}=<name>{also}")


def _iter_datasets(path: str, split: str, setting: str) -> Iterator[tuple[str, Any]]:
    import datasets

    saved_markers = ("dataset_info.json", "dataset_dict.json")
    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in saved_markers):
        loaded = datasets.load_from_disk(path)  # a directory written by save_to_disk
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise _no_split(path, split, loaded, setting)
            loaded = loaded[split]
        elif split != "train":
            # One Dataset has no splits: every split name would give all of it, and a
            # validation split would then be the training records.
            fix = "validation records come from data.val_path or data.val_fraction" \
                if "val_split" in setting else "the whole dataset is read"
            raise RecordError(path, f"is one dataset without splits (save_to_disk of a "
                              f"Dataset), so {setting}={split} picks nothing: remove "
                              f"{setting}; {fix}")
        dataset = loaded
    elif os.path.exists(path) and not os.path.isdir(path):
        raise RecordError(path, "unknown file type: use .jsonl, .json or .parquet")
    else:
        try:  # a hub name or a data folder; `split` may slice, e.g. train[:1000]
            dataset = datasets.load_dataset(path, split=split)
        except ValueError as exc:
            if not str(exc).startswith("Unknown split"):
                raise
            # The splits are prepared by now: listing them reads the local cache.
            raise _no_split(path, split, datasets.load_dataset(path), setting) from None
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


def _quote(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _starts_answer(where: str, field: str, rest: Messages, offset: int) -> Messages:
    """`rest`, the messages of a conversation from `offset` on, as a completion: there must
    be some, and the first must be the assistant's (a completion is what the model says)."""
    if not rest:
        raise RecordError(where, f"holds no message after the prompt's {offset}, so its "
                          "completion would be empty", field)
    if rest[0]["role"] != "assistant":
        raise RecordError(where, f"message {offset}, the first after the prompt, is a "
                          f"{rest[0]['role']} message; a completion starts with an assistant "
                          "message", field)
    return rest


def _strip_prompt_turn(where: str, prompt: str, completions: dict[str, Messages]
                       ) -> tuple[Messages, dict[str, Messages]]:
    """A string prompt and whole conversations that repeat it as their user turn (the
    UltraFeedback-binarized shape): the prompt becomes that user message, and each
    completion the messages after it."""
    turn = {"role": "user", "content": prompt}
    for field, conversation in completions.items():
        first = conversation[0]
        if first["role"] != "user" or first["content"] != prompt:
            raise RecordError(where, "is a conversation under a string 'prompt', so it must "
                              "open with that prompt as a user message, but message 0 is "
                              f"{first['role']} {_quote(first['content'])}, the prompt "
                              f"{_quote(prompt)}: give the prompt as messages, or the "
                              "completions as strings", field)
    return [turn], {f: _starts_answer(where, f, c[1:], 1) for f, c in completions.items()}


def _settle_forms(where: str, prompt: Text, completions: dict[str, Text]
                  ) -> tuple[Text, dict[str, Text]]:
    """Prompt and completions in one form: all strings, or all chat messages."""
    values = list(completions.values())
    if isinstance(prompt, str) and values and all(isinstance(v, list) for v in values):
        return _strip_prompt_turn(where, prompt, completions)
    _same_form(where, {"prompt": prompt, **completions})
    return prompt, completions


def _same_message(a: dict, b: dict) -> bool:
    return a["role"] == b["role"] and a["content"] == b["content"]


def _shared_prompt(where: str, conversations: dict[str, Messages]
                   ) -> tuple[Messages, dict[str, Messages]]:
    """TRL's implicit prompt: whole conversations with no `prompt` field share their first
    messages, which are the prompt; the rest of each is its completion. The prompt is the
    longest run of whole messages, from the first, that every conversation has."""
    (first_field, first), *others = conversations.items()
    n = min(len(c) for c in conversations.values())
    for _, other in others:
        n = next((i for i in range(n) if not _same_message(first[i], other[i])), n)
    if n == 0:
        odd = next(f for f, c in others if not _same_message(first[0], c[0]))
        raise RecordError(where, f"has no 'prompt' field, so the prompt is the messages that "
                          f"{' and '.join(conversations)} start with, but its first message "
                          f"differs from {first_field}'s: give a 'prompt' field", odd)
    return first[:n], {f: _starts_answer(where, f, c[n:], n) for f, c in conversations.items()}


def _implicit(raw: Any, fields: list[str]) -> bool:
    """A record without a prompt whose completions are all conversations."""
    return isinstance(raw, dict) and raw.get("prompt") is None and all(
        isinstance(raw.get(f), list) for f in fields)


HH_ASSISTANT = "\n\nAssistant:"
"""The turn marker of Anthropic-HH-style transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...")."""


def _implicit_strings(raw: Any) -> bool:
    """A pairwise record without a prompt whose chosen and rejected are both strings."""
    return isinstance(raw, dict) and raw.get("prompt") is None and all(
        isinstance(raw.get(f), str) for f in ("chosen", "rejected"))


def _shared_transcript(where: str, chosen: str, rejected: str) -> tuple[str, dict[str, str]]:
    """Anthropic-HH-style strings without a prompt: the prompt is their common start, up to
    and including its last "\\n\\nAssistant:" (the turn both answer); the rest of each is its
    completion. Cutting at a turn marker, not wherever the characters first differ, keeps
    a shared first word of the two answers in the completions."""
    shared = os.path.commonprefix([chosen, rejected])
    end = shared.rfind(HH_ASSISTANT)
    if end < 0:
        raise RecordError(where, "missing; chosen and rejected are strings, and an implicit "
                          "prompt is read from message lists, or from strings that share a "
                          f"start ending in {HH_ASSISTANT!r} (Anthropic HH); give the shared "
                          "start of chosen and rejected in 'prompt'", "prompt")
    end += len(HH_ASSISTANT)
    return chosen[:end], {"chosen": chosen[end:], "rejected": rejected[end:]}


def parse_pairwise(where: str, raw: Any) -> Record:
    if _implicit(raw, ["chosen", "rejected"]):
        texts = {f: _check_text(where, f, raw[f]) for f in ("chosen", "rejected")}
        prompt, texts = _shared_prompt(where, texts)
    elif _implicit_strings(raw):
        prompt, texts = _shared_transcript(where, raw["chosen"], raw["rejected"])
    else:
        _require(where, raw, PAIRWISE_FIELDS)
        prompt = _check_text(where, "prompt", raw["prompt"])
        texts = {f: _check_text(where, f, raw[f]) for f in ("chosen", "rejected")}
        prompt, texts = _settle_forms(where, prompt, texts)
    margin = raw.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise RecordError(where, f"expected a number, got {margin!r}", "margin")
    return pairwise_record(prompt, texts["chosen"], texts["rejected"], where,
                           None if margin is None else float(margin))


def parse_unpaired(where: str, raw: Any) -> Record:
    if _implicit(raw, ["completion"]):
        # One conversation has no second one to share its prompt with: where the prompt
        # ends is a guess (the last user turn? the first?), so it must be given.
        raise RecordError(where, "missing: an unpaired record's prompt cannot be told apart "
                          "from one conversation; give the prompt messages in 'prompt' and "
                          "the answer in 'completion'", "prompt")
    _require(where, raw, ("prompt", "completion", "label"))
    prompt = _check_text(where, "prompt", raw["prompt"])
    prompt, texts = _settle_forms(where, prompt, {
        "completion": _check_text(where, "completion", raw["completion"])})
    if not isinstance(raw["label"], bool):
        raise RecordError(where, f"expected a boolean (true = desirable), got {raw['label']!r}",
                          "label")
    return Record(prompt, (texts["completion"],), where, label=raw["label"], kind="unpaired")


def _check_rank(where: str, field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(where, f"expected an integer rank, got {value!r}", field)
    return value


def parse_ranked(where: str, raw: Any) -> Record:
    if isinstance(raw, dict) and "answers" in raw and "completions" not in raw:
        return _parse_nectar(where, raw)
    implicit = isinstance(raw, dict) and raw.get("prompt") is None and \
        isinstance(raw.get("completions"), list) and raw["completions"] and \
        all(isinstance(c, list) for c in raw["completions"])
    _require(where, raw, ("completions", "ranks") if implicit else
             ("prompt", "completions", "ranks"))
    completions, ranks = raw["completions"], raw["ranks"]
    if not isinstance(completions, list) or len(completions) < 2:
        raise RecordError(where, "a ranking needs a list of at least 2 completions", "completions")
    if not isinstance(ranks, list) or len(ranks) != len(completions):
        raise RecordError(where, f"expected a list of {len(completions)} ranks, one per "
                          f"completion, got {ranks!r}", "ranks")
    texts = {f"completions[{i}]": _check_text(where, f"completions[{i}]", c)
             for i, c in enumerate(completions)}
    if implicit:
        prompt, texts = _shared_prompt(where, texts)
    else:
        prompt, texts = _settle_forms(where, _check_text(where, "prompt", raw["prompt"]), texts)
    return Record(prompt, tuple(texts.values()), where, kind="ranked",
                  ranks=tuple(_check_rank(where, f"ranks[{i}]", r) for i, r in enumerate(ranks)))


def _parse_nectar(where: str, raw: dict) -> Record:
    _require(where, raw, ("prompt", "answers"))
    prompt = _check_text(where, "prompt", raw["prompt"])
    answers = raw["answers"]
    if not isinstance(answers, list) or len(answers) < 2:
        raise RecordError(where, "a ranking needs a list of at least 2 answers", "answers")
    texts, ranks = {}, []
    for i, answer in enumerate(answers):
        if not isinstance(answer, dict):
            raise RecordError(where, "expected an object {answer, rank}", f"answers[{i}]")
        for key in ("answer", "rank"):
            if answer.get(key) is None:
                raise RecordError(where, "missing", f"answers[{i}].{key}")
        texts[f"answers[{i}].answer"] = _check_text(where, f"answers[{i}].answer",
                                                    answer["answer"])
        ranks.append(_check_rank(where, f"answers[{i}].rank", answer["rank"]))
    prompt, texts = _settle_forms(where, prompt, texts)
    return Record(prompt, tuple(texts.values()), where, ranks=tuple(ranks), kind="ranked")


def parse_attributed(where: str, raw: Any) -> Record:
    """A response with attribute values; null values mean "not labelled". Names and ranges
    are checked against the schema later (`AttributeSchema.check`), which knows them."""
    _require(where, raw, ("prompt", "response", "attributes"))
    prompt, texts = _settle_forms(where, _check_text(where, "prompt", raw["prompt"]),
                                  {"response": _check_text(where, "response", raw["response"])})
    attributes = raw["attributes"]
    if not isinstance(attributes, dict):
        raise RecordError(where, "expected an object {name: value}, got "
                          f"{type(attributes).__name__}", "attributes")
    for name, value in attributes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RecordError(where, f"expected a number or null, got {value!r}",
                              f"attributes.{name}")
    return Record(prompt, (texts["response"],), where, kind="attributed",
                  attributes=tuple((str(k), v) for k, v in attributes.items()))


def parse_prompt(where: str, raw: Any) -> Record:
    """A prompt alone, for online objectives: they sample the completions themselves."""
    _require(where, raw, ("prompt",))
    extra = tuple((str(k), v) for k, v in raw.items() if k != "prompt")
    return Record(_check_text(where, "prompt", raw["prompt"]), (), where, kind="prompts",
                  extra=extra)


PARSERS = {"pairwise": parse_pairwise, "unpaired": parse_unpaired, "ranked": parse_ranked,
           "attributed": parse_attributed, "prompts": parse_prompt}


def check_columns(columns: Columns | dict[str, str] | None, fmt: str,
                  setting: str = "data.columns") -> dict[str, str]:
    """`columns` ({field: source column}, or a `Columns`) checked against the fields of
    format `fmt`; the fields it maps."""
    if isinstance(columns, Columns):
        columns = dataclasses.asdict(columns)
    columns = {name: column for name, column in (columns or {}).items() if column is not None}
    for name, column in columns.items():
        if name not in FIELDS[fmt]:
            raise RecordError(setting, f"{fmt} records have no such field; map one of "
                              f"{', '.join(FIELDS[fmt])}: {setting}.<field>=<column>", name)
        if not isinstance(column, str) or not column:
            raise RecordError(setting, f"expected a column name, got {column!r}", name)
    return columns


def renamed(raw: Any, columns: dict[str, str]) -> Any:
    """A raw record with its columns under the format's field names. A mapped field's own
    column, if the source has one too, gives way to the column mapped to it."""
    if not columns or not isinstance(raw, dict):
        return raw
    out = {key: value for key, value in raw.items() if key not in columns}
    out.update({name: raw[column] for name, column in columns.items() if column in raw})
    return out


def _parsed(parse, where: str, raw: Any, columns: dict[str, str]) -> Record:
    try:
        return parse(where, renamed(raw, columns))
    except RecordError as exc:
        top = (exc.field or "").split("[")[0].split(".")[0]
        if top not in columns:
            raise
        raise RecordError(exc.where, exc.message, exc.field, columns[top]) from None


def read_records(path: str, fmt: str, split: str = "train", columns: dict[str, str] | None = None,
                 split_setting: str = "data.split") -> list[Record]:
    """Every record of `path` in format `fmt` (pairwise | unpaired | ranked | attributed |
    prompts), checked; `columns` maps the format's fields to the source's column names."""
    if fmt not in PARSERS:
        raise ValueError(f"no reader for {fmt!r} records; known: {sorted(PARSERS)}")
    parse, columns = PARSERS[fmt], check_columns(columns, fmt)
    return [_parsed(parse, where, raw, columns)
            for where, raw in iter_raw(path, split, split_setting)]


def read_pairwise(path: str, split: str = "train") -> list[Record]:
    return read_records(path, "pairwise", split)


def unpair(records: list[Record]) -> list[Record]:
    """Pairwise -> unpaired: each pair gives a desirable and an undesirable completion."""
    return [Record(r.prompt, (completion,), f"{r.where} ({side})", label=side == "chosen",
                   kind="unpaired")
            for r in records for side, completion in (("chosen", r.chosen),
                                                      ("rejected", r.rejected))]
