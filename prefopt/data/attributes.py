"""Attribute schemas for SteerLM-style conditioning: which attributes a record may carry,
their ranges, which ones steer generation, and how they are written into the prompt.

SteerLM (Dong et al. 2023, "SteerLM: Attribute Conditioned SFT as an (User-Steerable)
Alternative to RLHF", arXiv:2310.05344) trains on responses labelled with attribute values
and writes those values into the assistant turn before the response, e.g.

    <|user|>pick 8274915<|end|><|assistant|>quality:4,order:1,length:3
    987<|end|>

so that at generation time asking for `quality:4,order:1,length:3` steers the answer.
Only steerable attributes are written; the others are labels (an attribute model predicts
them, a data filter may use them). Values are written in the schema's order, integers
without a decimal point, and an attribute a record lacks is left out.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from prefopt.data.records import RecordError

SCHEMA_FILE = "attributes.json"  # written next to an exported model


@dataclass
class AttributeSpec:
    """One attribute: its name, its closed range [min, max], and how it is used."""

    name: str = MISSING
    min: float = 0.0
    max: float = 4.0
    integer: bool = True
    """Values must be whole numbers (written without a decimal point)."""
    steerable: bool = True
    """Written into the prompt, so generation can ask for it."""


class AttributeSchema:
    """An ordered list of `AttributeSpec`s with the checks and the serialisation."""

    def __init__(self, specs: list[AttributeSpec]):
        specs = [s if isinstance(s, AttributeSpec) else AttributeSpec(**s) for s in specs]
        if not specs:
            raise ValueError("data.attributes: the schema names no attribute")
        names = [s.name for s in specs]
        for spec in specs:
            if not spec.name or not spec.name.replace("_", "").isalnum():
                raise ValueError(f"data.attributes: attribute name {spec.name!r} must be a "
                                 "non-empty word (letters, digits, _)")
            if names.count(spec.name) > 1:
                raise ValueError(f"data.attributes: attribute {spec.name!r} is listed twice")
            if not spec.min < spec.max:
                raise ValueError(f"data.attributes: attribute {spec.name!r} needs min < max, "
                                 f"got [{spec.min}, {spec.max}]")
        self.specs = specs
        self.names = tuple(names)
        self.by_name = {s.name: s for s in specs}

    def __len__(self) -> int:
        return len(self.specs)

    def __eq__(self, other) -> bool:
        return isinstance(other, AttributeSchema) and self.specs == other.specs

    @property
    def steerable(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs if s.steerable)

    # -- checking ---------------------------------------------------------------------------
    def check_value(self, name: str, value: Any, where: str, field: str) -> float:
        """`value` as a float, or a RecordError naming `where` and `field`."""
        spec = self.by_name.get(name)
        if spec is None:
            raise RecordError(where, f"unknown attribute {name!r}; the schema (data.attributes) "
                              f"has {list(self.names)}", field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise RecordError(where, f"expected a number, got {value!r}", field)
        if not spec.min <= value <= spec.max:
            raise RecordError(where, f"{value!r} is outside the schema's range "
                              f"[{_text(spec.min)}, {_text(spec.max)}]", field)
        if spec.integer and value != int(value):
            raise RecordError(where, f"expected a whole number, got {value!r}", field)
        return float(value)

    def check(self, values: dict[str, Any], where: str, field: str = "attributes"
              ) -> dict[str, float]:
        """Checked values of one record; null means the attribute is not given."""
        if not isinstance(values, dict):
            raise RecordError(where, f"expected an object {{name: value}}, got "
                              f"{type(values).__name__}", field)
        return {name: self.check_value(name, value, where, f"{field}.{name}")
                for name, value in values.items() if value is not None}

    def check_request(self, values: dict[str, Any], where: str = "request") -> dict[str, float]:
        """Values asked of generation: in the schema's ranges, and steerable."""
        checked = self.check(values, where)
        for name in checked:
            if not self.by_name[name].steerable:
                raise RecordError(where, f"attribute {name!r} is not steerable (the schema "
                                  f"steers {list(self.steerable)})", f"attributes.{name}")
        return checked

    def as_json(self, values: dict[str, float]) -> dict[str, float | int]:
        """Values for a JSON file: whole-number attributes as integers."""
        return {n: int(v) if self.by_name[n].integer else v for n, v in values.items()}

    # -- the prompt string ------------------------------------------------------------------
    def serialise(self, values: dict[str, float]) -> str:
        """`quality:4,order:1,length:3`: steerable attributes present, in schema order."""
        return ",".join(f"{name}:{_text(values[name])}" for name in self.steerable
                        if name in values)

    def parse(self, text: str, where: str = "attributes") -> dict[str, float]:
        """The inverse of `serialise` (also reads the command line's `order=1,length=3`)."""
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.replace("=", ":", 1).partition(":")
            if not sep:
                raise RecordError(where, f"expected name:value, got {item!r}")
            try:
                values[name.strip()] = float(value)
            except ValueError:
                raise RecordError(where, f"expected a number, got {value.strip()!r}",
                                  f"attributes.{name.strip()}") from None
        return self.check(values, where)

    # -- scaling for the attribute model --------------------------------------------------------
    def normalise(self, name: str, value: float) -> float:
        """Map [min, max] to [0, 1], so every attribute weighs alike in the regression."""
        spec = self.by_name[name]
        return (value - spec.min) / (spec.max - spec.min)

    def denormalise(self, name: str, value: float) -> float:
        """A prediction back in the attribute's units: clipped to range, rounded if whole."""
        spec = self.by_name[name]
        value = min(max(spec.min + value * (spec.max - spec.min), spec.min), spec.max)
        return float(round(value)) if spec.integer else value

    # -- storage ------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        payload = {"attributes": [asdict(s) for s in self.specs]}
        (Path(directory) / SCHEMA_FILE).write_text(json.dumps(payload, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "AttributeSchema":
        path = Path(directory) / SCHEMA_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: {directory} was not trained on "
                                    "attributed records by prefopt-train")
        return cls([AttributeSpec(**s) for s in json.loads(path.read_text())["attributes"]])


def _text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
