"""Sampling completions from a policy, with prompts rendered exactly as in training.

    completions = generate(model, tokenizer, ["sort 5213"], GenerationConfig())

The prompt goes through the same chat template and generation prompt as the training
data (`Encoder.prompt_ids`), so a policy is asked in the form it was trained on.

A SteerLM policy (objective=steerlm) is steered by asking for attribute values: they are
written into the attribute line that opens the assistant turn, as in training.

    policy, tokenizer, schema = load_policy("outputs/.../policy")
    generate(policy, tokenizer, ["pick 827491"], schema=schema,
             attributes=[{"quality": 4, "order": 1, "length": 3}])        # ["987"]

`prefopt-generate` does the same from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from prefopt.data.collate import left_padded
from prefopt.data.records import Text
from prefopt.data.tokenize import Encoder, TokenizeConfig


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    do_sample: bool = False
    """Sample (with temperature and top_p) instead of greedy decoding."""
    temperature: float = 1.0
    top_p: float = 1.0
    num_samples: int = 1
    """Completions per prompt (returned consecutively)."""
    batch_size: int = 64


def load_policy(path: str, **model_kwargs):
    """(model, tokenizer, attribute schema or None) of a policy exported by prefopt-train."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefopt.data.attributes import SCHEMA_FILE, AttributeSchema

    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no such model directory")
    model = AutoModelForCausalLM.from_pretrained(path, **model_kwargs)
    schema = AttributeSchema.load(path) if (Path(path) / SCHEMA_FILE).exists() else None
    return model, AutoTokenizer.from_pretrained(path), schema


@torch.no_grad()
def generate(model, tokenizer, prompts: list[Text], cfg: GenerationConfig | None = None,
             tokenize: TokenizeConfig | None = None, schema=None,
             attributes: list[dict] | None = None) -> list[str]:
    """`cfg.num_samples` completions per prompt, decoded without special tokens.

    With `schema` (a SteerLM policy's AttributeSchema) every prompt ends in its attribute
    line: `attributes[i]` ({name: value}, checked against the schema; {} or None for
    none, the unconditioned form)."""
    cfg = cfg or GenerationConfig()
    encoder = Encoder(tokenizer, tokenize or TokenizeConfig(
        max_length=getattr(model.config, "max_position_embeddings", 4096)), schema)
    if attributes is not None and schema is None:
        raise ValueError("attributes were requested, but the policy has no attribute schema "
                         "(it was not trained with objective=steerlm)")
    if schema is not None:
        attributes = [schema.check_request(a or {}, f"request {i}")
                      for i, a in enumerate(attributes or [{}] * len(prompts))]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[str] = []
    prompt_ids = encoder.prompt_ids(prompts, attributes)
    for start in range(0, len(prompt_ids), cfg.batch_size):
        chunk = prompt_ids[start:start + cfg.batch_size]
        input_ids, attention_mask = left_padded(chunk, tokenizer.pad_token_id)
        width = input_ids.shape[1]
        sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.do_sample else {}
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
            num_return_sequences=cfg.num_samples, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, **sampling)
        out += tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return out


def _requests(args, schema) -> tuple[list[Text], list[dict] | None]:
    """(prompts, attribute requests) from --prompt / --input and --attributes."""
    from prefopt.data.records import RecordError, _check_text, iter_raw

    if args.attributes and schema is None:
        raise ValueError(f"--attributes: the policy {args.model} has no attribute schema (it "
                         "was not trained with objective=steerlm); leave --attributes out, "
                         "or give a SteerLM policy")
    default = schema.parse(args.attributes, "--attributes") if args.attributes else {}
    prompts, requests = list(args.prompt or []), [default] * len(args.prompt or [])
    if args.input:
        for where, raw in iter_raw(args.input):
            if not isinstance(raw, dict) or raw.get("prompt") is None:
                raise RecordError(where, "missing", "prompt")
            prompts.append(_check_text(where, "prompt", raw["prompt"]))
            asked = raw.get("attributes")
            if asked is not None and schema is None:
                raise RecordError(where, "this policy has no attribute schema", "attributes")
            requests.append({**default, **schema.check_request(asked, where)}
                            if asked is not None else default)
    if not prompts:
        raise ValueError("nothing to answer: give --prompt TEXT or --input FILE")
    return prompts, requests if schema is not None else None


def _at_least_one(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") \
            from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _positive(upper: float | None):
    """A float type for argparse in (0, upper] (no bound without `upper`)."""
    import argparse

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0 or (upper is not None and value > upper):
            bound = f"in (0, {upper:g}]" if upper is not None else "> 0"
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text}")
        return value
    return parse


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    import sys

    from prefopt.data.output import write_jsonl
    from prefopt.data.records import RecordError

    parser = argparse.ArgumentParser(
        prog="prefopt-generate",
        description="Answer prompts with a policy exported by prefopt-train, rendering them "
                    "as in training. A SteerLM policy is steered with --attributes.")
    parser.add_argument("model", help="a policy directory (<run>/policy)")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--input", help="JSONL/JSON/Parquet records {prompt, attributes?}")
    parser.add_argument("--attributes", help="requested values, e.g. quality=4,order=1 "
                        "(for every prompt; a record's own attributes take precedence)")
    parser.add_argument("--output", type=Path, help="JSONL file (default: standard output)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy")
    parser.add_argument("--temperature", type=_positive(None), default=1.0)
    parser.add_argument("--top-p", type=_positive(1.0), default=1.0,
                        help="nucleus sampling: the share of probability kept, in (0, 1]")
    parser.add_argument("--num-samples", type=_at_least_one, default=1)
    parser.add_argument("--max-new-tokens", type=_at_least_one, default=32)
    args = parser.parse_args(argv)
    try:
        model, tokenizer, schema = load_policy(args.model)
        prompts, requests = _requests(args, schema)
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                               temperature=args.temperature, top_p=args.top_p,
                               num_samples=args.num_samples)
        answers = generate(model, tokenizer, prompts, cfg, schema=schema, attributes=requests)
        rows = [{"prompt": prompts[i // cfg.num_samples], "response": answer,
                 **({"attributes": schema.as_json(requests[i // cfg.num_samples])}
                    if requests else {})}
                for i, answer in enumerate(answers)]
        if args.output:
            write_jsonl(args.output, rows, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, RecordError, ValueError) as exc:
        sys.exit(f"prefopt-generate: error: {exc}")
    if not args.output:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
