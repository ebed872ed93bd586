"""What the policy answers, at every validation: greedy completions of a few held-out
prompts, in `samples.jsonl` and in the loggers that show tables.

Watching the loss and the reward accuracy says whether an objective is being optimised;
reading what the policy writes says whether that is what was wanted (a policy can win
preferences by length or by repeating itself). The prompts are the first
`samples.count` validation records', answered greedily (`prefopt.generate`, the prompts
rendered as in training) with at most `samples.max_new_tokens` new tokens: the same
prompts at every validation, so that the rows of one prompt read as its history.

`samples.jsonl` holds one JSON object per completion: {"step", "prompt", "completion"}.
Each validation rewrites it atomically with its rows appended (`write_jsonl`), after
dropping the rows of its step and later ones: a resumed run replaces what the interrupted
one wrote after its checkpoint, step by step, and a step is never written twice.

Only the first process writes (under DDP the others go on to the next step and wait for
it there); with sharded parameters (FSDP, DeepSpeed ZeRO-3) no process holds the whole
policy, and no samples are written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

from prefopt.data.output import write_jsonl
from prefopt.data.records import Text
from prefopt.data.tokenize import TokenizeConfig
from prefopt.generate import GenerationConfig, generate

SAMPLES_FILE = "samples.jsonl"
COLUMNS = ("step", "prompt", "completion")


@dataclass
class SamplesConfig:
    """Greedy completions of held-out prompts at every validation (offline objectives)."""

    count: int = 4
    """How many validation prompts to answer (the first ones); 0: none."""
    max_new_tokens: int = 16
    """The longest completion, in tokens."""


def samples_problem(cfg: SamplesConfig) -> str | None:
    """What is wrong with `cfg`, as a one-line message naming the setting; None if fine."""
    for key, least in (("count", 0), ("max_new_tokens", 1)):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            return (f"samples.{key}={value!r}: must be a whole number >= {least}; set "
                    f"samples.{key}=<n>" + (" (0: no samples)" if key == "count" else ""))
    return None


class SampleWriter(pl.Callback):
    """Writes the policy's completions of `prompts` at the end of every validation."""

    def __init__(self, path: Path, prompts: list[Text], tokenizer, max_new_tokens: int,
                 tokenize: TokenizeConfig, schema=None):
        """`tokenize`: how the training data are rendered (chat template, truncation);
        `schema`: a SteerLM policy's attributes (prompts are asked unconditioned)."""
        self.path, self.prompts, self.tokenizer = Path(path), list(prompts), tokenizer
        self.generation = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False)
        self.tokenize, self.schema = tokenize, schema
        self._written: set[int] = set()  # steps this process wrote

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        # Once per step: the last validation of fit and the final one share a step.
        if trainer.sanity_checking or not trainer.is_global_zero or step in self._written \
                or not self.prompts:
            return
        strategy = trainer.strategy
        if isinstance(strategy, pl.strategies.FSDPStrategy) \
                or getattr(strategy, "zero_stage_3", False):
            return  # sharded parameters: no one process holds the whole policy to ask
        completions = generate(pl_module.policy, self.tokenizer, self.prompts,
                               self.generation, self.tokenize, schema=self.schema)
        rows = [{"step": step, "prompt": prompt, "completion": completion}
                for prompt, completion in zip(self.prompts, completions)]
        write_jsonl(self.path, [*self._rows_before(step), *rows], overwrite=True)
        self._written.add(step)
        for logger in trainer.loggers:
            _log_table(logger, rows, step)

    def _rows_before(self, step: int) -> list[dict]:
        """The file's rows of earlier steps (later ones are an interrupted run's)."""
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return [row for row in rows if row["step"] < step]


def _log_table(logger, rows: list[dict], step: int) -> None:
    """The rows as a table where the logger shows one (CSV does not)."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_text("samples", _markdown(rows), global_step=step)
    elif isinstance(logger, WandbLogger):
        logger.log_table(key="samples", columns=list(COLUMNS),
                         data=[[json.dumps(row[c], ensure_ascii=False) if c == "prompt"
                                and not isinstance(row[c], str) else row[c] for c in COLUMNS]
                               for row in rows], step=step)


def _markdown(rows: list[dict]) -> str:
    """A Markdown table (TensorBoard renders its text as Markdown)."""
    def cell(value) -> str:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return text.replace("|", "\\|").replace("\n", "<br>") or " "
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)
