"""The built-in arithmetic task: small sums and differences with one right answer.

A prompt is an expression to finish, `12+7=`; its answer the number, `19`. Operands are
whole numbers from 0 to `max_operand`; a difference never goes below zero (`a-b=` with
a >= b). A program knows every answer, so the task gives what the online and offline
objectives need, all from one seed (no download, the same on every machine):

- prompts `{prompt, answer}`: the gold answer rides along to a verifiable reward
  (`reward=exact_match`, prefopt.online.verifiable);
- pairwise `{prompt, chosen, rejected}`: the answer over a plausible mistake (off by one,
  off by ten, the other operation, digits swapped), for SFT warm starts and offline
  objectives;
- unpaired `{prompt, completion, label}`.

The validation prompts are `n_val` distinct expressions that no training record uses;
training records are `n_train` draws (with repetition: there are only
(m+1)^2 sums and (m+1)(m+2)/2 differences for m = `max_operand`) from the others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b}


@dataclass
class ArithmeticConfig:
    n_train: int = 4000
    """Training records, drawn from the non-validation expressions (with repetition)."""
    n_val: int = 64
    """Validation records, distinct expressions never trained on."""
    max_operand: int = 20
    """Operands are 0..max_operand."""
    operations: list[str] = field(default_factory=lambda: list(OPERATIONS))
    """Of `+` and `-`."""
    seed: int = 4321
    """Seed of the task's generator (independent of the training seed)."""
    desirable_fraction: float = 0.5
    """Share of unpaired records whose completion is the right answer."""


def make_prompt(a: int, operation: str, b: int) -> str:
    return f"{a}{operation}{b}="


def parse_prompt(prompt: str) -> tuple[int, str, int]:
    text = prompt.strip()
    for operation in OPERATIONS:
        left, sep, right = text.removesuffix("=").partition(operation)
        if sep and text.endswith("=") and left.isdigit() and right.isdigit():
            return int(left), operation, int(right)
    raise ValueError(f"not a prompt of the arithmetic task: {prompt!r}")


def solve(prompt: str) -> str:
    a, operation, b = parse_prompt(prompt)
    return str(OPERATIONS[operation](a, b))


def expressions(cfg: ArithmeticConfig) -> list[str]:
    """Every expression of the task, in a fixed order."""
    out = []
    for operation in cfg.operations:
        for a in range(cfg.max_operand + 1):
            for b in range(cfg.max_operand + 1):
                if operation == "-" and b > a:
                    continue  # no negative answers
                out.append(make_prompt(a, operation, b))
    return out


def _wrong_answer(prompt: str, rng: random.Random) -> str:
    """A plausible wrong answer (never the right one, never negative)."""
    a, operation, b = parse_prompt(prompt)
    right = OPERATIONS[operation](a, b)
    other = OPERATIONS["-" if operation == "+" else "+"](a, b)
    while True:
        kind = rng.choice(("off_by_one", "off_by_ten", "other_operation", "swap_digits"))
        if kind == "off_by_one":
            wrong = right + rng.choice((-1, 1))
        elif kind == "off_by_ten":
            wrong = right + rng.choice((-10, 10))
        elif kind == "other_operation":
            wrong = other
        else:
            wrong = int(str(right)[::-1])
        if wrong >= 0 and wrong != right:
            return str(wrong)


def _check(cfg: ArithmeticConfig) -> None:
    unknown = set(cfg.operations) - set(OPERATIONS)
    if unknown or not cfg.operations:
        raise ValueError(f"data.arithmetic.operations: unknown {sorted(unknown)}; choose "
                         f"from {sorted(OPERATIONS)}")
    if cfg.max_operand < 1:
        raise ValueError(f"data.arithmetic.max_operand must be >= 1, got {cfg.max_operand}")
    total = len(expressions(cfg))
    if not 1 <= cfg.n_val < total:
        raise ValueError(f"data.arithmetic.n_val={cfg.n_val}: the task has {total} "
                         f"expressions, and training needs some left: choose 1..{total - 1}")
    if cfg.n_train < 1:
        raise ValueError(f"data.arithmetic.n_train must be >= 1, got {cfg.n_train}")


def split_prompts(cfg: ArithmeticConfig) -> dict[str, list[str]]:
    """{"train": [...], "val": [...]} prompts, reproducible from `cfg.seed`."""
    _check(cfg)
    rng = random.Random(cfg.seed)
    pool = expressions(cfg)
    rng.shuffle(pool)
    val, rest = pool[:cfg.n_val], pool[cfg.n_val:]
    return {"train": [rng.choice(rest) for _ in range(cfg.n_train)], "val": val}


def splits(cfg: ArithmeticConfig, fmt: str = "pairwise") -> dict[str, list[dict]]:
    """{"train": [...], "val": [...]} raw records of format `fmt` (pairwise | unpaired |
    prompts), on the same prompts for every format."""
    prompts = split_prompts(cfg)
    rng = random.Random(f"{cfg.seed}/{fmt}")  # the wrong answers' own stream

    def unpaired(prompt):
        desirable = rng.random() < cfg.desirable_fraction
        completion = solve(prompt) if desirable else _wrong_answer(prompt, rng)
        return {"prompt": prompt, "completion": completion, "label": desirable}

    make = {"pairwise": lambda p: {"prompt": p, "chosen": solve(p),
                                   "rejected": _wrong_answer(p, rng)},
            "unpaired": unpaired,
            "prompts": lambda p: {"prompt": p, "answer": solve(p)}}
    if fmt not in make:
        raise ValueError(f"the arithmetic task has no {fmt!r} records; it has {sorted(make)}")
    return {name: [make[fmt](p) for p in group] for name, group in prompts.items()}
