"""What a run exports: the final policy, and for LoRA its adapter alone, each with a card.

- `policy/`: the policy as plain transformers loads it (`save_pretrained`), LoRA adapters
  merged into the base weights; its tokenizer; a SteerLM policy's attribute schema.
- `policy-adapter/` (LoRA runs only): the adapter alone in peft's `save_pretrained`
  format, small, for `peft.PeftModel.from_pretrained(base, "policy-adapter")` on the same
  base model; its tokenizer too.
- a `README.md` model card in each: the base model, the objective and its settings, the
  data (where from, how many records), the final validation metrics, the prefopt version
  and the command that trained it.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from prefopt.data.output import write_atomically
from prefopt.models import exportable, uses_lora

POLICY_DIR = "policy"
ADAPTER_DIR = "policy-adapter"
CARD_FILE = "README.md"


@dataclass
class RunFacts:
    """What a model card says about the run that made the model."""

    base_model: str
    """`model.name_or_path` (with its revision), or a description of the built-in model."""
    objective: dict
    """The objective's config: its name and every setting."""
    data: dict[str, str]
    """Where the records came from and what the data rules kept, per split."""
    metrics: dict[str, float]
    """The final validation metrics."""
    steps: int
    command: list[str] = field(default_factory=list)
    """The command line's overrides, where known."""


def export(out: Path, policy, tokenizer, facts: RunFacts, schema=None) -> list[Path]:
    """Write `policy-adapter/` (LoRA only) and `policy/` into `out`, each with its card;
    returns the folders written. Merging changes `policy` in place: call it last."""
    written = []
    if uses_lora(policy):  # before the merge, which removes the adapter layers
        adapter = out / ADAPTER_DIR
        policy.save_pretrained(adapter)  # adapter weights and adapter_config.json only
        tokenizer.save_pretrained(adapter)
        _write_card(adapter, facts, adapter=True)
        written.append(adapter)
    merged = out / POLICY_DIR
    exportable(policy).save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    if schema is not None:  # prefopt-generate / prefopt-label read it
        schema.save(merged)
    _write_card(merged, facts, adapter=False)
    written.append(merged)
    return written


def prefopt_version() -> str:
    try:
        return importlib.metadata.version("prefopt")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


def _write_card(folder: Path, facts: RunFacts, adapter: bool) -> None:
    # Written after save_pretrained, which (peft's) writes a README.md of its own.
    text = model_card(facts, adapter)
    write_atomically(folder / CARD_FILE, lambda f: f.write(text.encode("utf-8")))


def model_card(facts: RunFacts, adapter: bool) -> str:
    """The README.md of an exported folder: Hugging Face's YAML header, then Markdown."""
    name = facts.objective.get("name", "?")
    header = {"library_name": "peft" if adapter else "transformers",
              "tags": ["prefopt", name] + (["lora"] if adapter else [])}
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
             f"# A policy trained with prefopt ({name})", ""]
    if adapter:
        lines += ["The LoRA adapter alone. Load it on its base model:", "", "```python",
                  "from peft import PeftModel",
                  "policy = PeftModel.from_pretrained(base, \"policy-adapter\")", "```", "",
                  f"`{POLICY_DIR}/` beside it holds the same policy with the adapter merged "
                  "into the base weights.", ""]
    else:
        lines += ["```python", "from transformers import AutoModelForCausalLM",
                  f"policy = AutoModelForCausalLM.from_pretrained(\"{POLICY_DIR}\")", "```", ""]
    lines += [f"- base model: {facts.base_model}", f"- objective: `{name}`",
              f"- optimizer steps: {facts.steps}", f"- prefopt version: {prefopt_version()}"]
    if facts.command:
        lines.append(f"- command: `prefopt-train {' '.join(facts.command)}`")
    lines += ["", "## Objective", "", "```yaml",
              yaml.safe_dump(facts.objective, sort_keys=False).rstrip(), "```", "",
              "## Data", ""]
    lines += [f"- {key}: {value}" for key, value in facts.data.items()]
    lines += ["", "## Final validation metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| `{key}` | {value:.4f} |" for key, value in sorted(facts.metrics.items())]
    return "\n".join(lines) + "\n"
