"""Labelling responses with a trained attribute model (objective=attribute_model).

    labeler = AttributeLabeler.load("outputs/.../policy")
    labeler.label(["pick 827491"], ["987"])   # [{"quality": 4.0, "order": 1.0, "length": 3.0}]

The model predicts every attribute of its schema on the [0, 1] scale it was trained on;
`label` maps the predictions back to the attributes' units, clipped to their ranges and
rounded for whole-number attributes. Pairs are rendered as in training (no attribute
line). `prefopt-label` labels a file of {prompt, response} records, giving attributed
records that `objective=steerlm` trains on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from prefopt.data.attributes import AttributeSchema
from prefopt.data.output import write_jsonl
from prefopt.data.records import RecordError, Text, _check_text, _require, iter_raw
from prefopt.data.tokenize import TokenizeConfig
from prefopt.steer.scorer import RewardScorer


class AttributeLabeler:
    def __init__(self, model, tokenizer, schema: AttributeSchema,
                 tokenize: TokenizeConfig | None = None):
        # The scorer renders pairs exactly as training did and returns every head output;
        # its scalar `score` does not apply (one output per attribute here).
        self.scorer = RewardScorer(model, tokenizer, tokenize)
        self.schema = schema

    @classmethod
    def load(cls, path: str, tokenize: TokenizeConfig | None = None, **model_kwargs
             ) -> "AttributeLabeler":
        """An attribute model saved by prefopt-train (objective=attribute_model)."""
        schema = AttributeSchema.load(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, **model_kwargs)
        if model.config.num_labels != len(schema):
            raise ValueError(f"{path} has {model.config.num_labels} outputs but its schema "
                             f"{len(schema)} attributes: not an attribute model")
        return cls(model, AutoTokenizer.from_pretrained(path), schema, tokenize)

    @property
    def model(self):
        return self.scorer.model

    def predict(self, prompts: list[Text], responses: list[Text], batch_size: int = 64
                ) -> torch.Tensor:
        """Raw predictions on the [0, 1] scale, [N, attributes] in schema order."""
        return self.scorer.outputs(prompts, responses, batch_size)

    def label(self, prompts: list[Text], responses: list[Text], batch_size: int = 64
              ) -> list[dict[str, float]]:
        """{name: value} per response, in the attributes' units."""
        names = self.schema.names
        return [{n: self.schema.denormalise(n, float(v)) for n, v in zip(names, row)}
                for row in self.predict(prompts, responses, batch_size)]


def _read(path: str) -> list[dict]:
    rows = []
    for where, raw in iter_raw(path):
        _require(where, raw, ("prompt", "response"))
        for field in ("prompt", "response"):
            _check_text(where, field, raw[field])
        rows.append(raw)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="prefopt-label",
        description="Label {prompt, response} records with an attribute model trained by "
                    "prefopt-train objective=attribute_model; writes attributed records "
                    "{prompt, response, attributes} for objective=steerlm.")
    parser.add_argument("model", help="the attribute model's directory (<run>/policy)")
    parser.add_argument("--input", required=True, help="JSONL/JSON/Parquet {prompt, response}")
    parser.add_argument("--output", required=True, type=Path, help="JSONL file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--only-missing", action="store_true",
                        help="keep the values a record already gives; predict the others")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        if args.output.exists() and not args.overwrite:
            raise FileExistsError(f"{args.output} exists; choose another --output or pass "
                                  "--overwrite")
        labeler = AttributeLabeler.load(args.model)
        rows = _read(args.input)
        labels = labeler.label([r["prompt"] for r in rows], [r["response"] for r in rows],
                               args.batch_size)
        out = []
        for row, predicted in zip(rows, labels):
            given = row.get("attributes") or {} if args.only_missing else {}
            attributes = {**predicted, **{k: v for k, v in given.items() if v is not None}}
            out.append({**row, "attributes": labeler.schema.as_json(attributes)})
        write_jsonl(args.output, out, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, RecordError, ValueError) as exc:
        sys.exit(f"prefopt-label: error: {exc}")
    print(f"prefopt-label: {len(out)} records labelled with {', '.join(labeler.schema.names)} "
          f"-> {args.output}")
