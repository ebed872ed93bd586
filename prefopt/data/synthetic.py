"""The built-in synthetic task: transform a digit string, checkably.

A prompt names an operation and a digit string, e.g. `sort 5213`; the answer is the
string after the operation, `1235`. A program knows the right answer, so the task yields
preference pairs (a correct answer over a plausible wrong one), a correctness check and a
graded score that later objectives reuse as rewards, rankings and attributes.
Everything is generated from a seed: no download, identical on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

OPERATIONS = {
    "sort": lambda digits: "".join(sorted(digits)),
    "reverse": lambda digits: digits[::-1],
}


@dataclass
class SyntheticConfig:
    n_train: int = 20000
    """Training pairs."""
    n_val: int = 256
    """Validation pairs, on prompts never seen in training."""
    min_digits: int = 3
    max_digits: int = 6
    operations: list[str] = field(default_factory=lambda: list(OPERATIONS))
    seed: int = 1234
    """Seed of the task's generator (independent of the training seed)."""
    k: int = 4
    """Candidates per prompt in rankings."""
    desirable_fraction: float = 0.5
    """Share of unpaired records whose completion is the correct answer."""


def make_prompt(operation: str, digits: str) -> str:
    return f"{operation} {digits}"


def parse_prompt(prompt: str) -> tuple[str, str]:
    operation, _, digits = prompt.strip().partition(" ")
    if operation not in OPERATIONS or not digits.isdigit():
        raise ValueError(f"not a prompt of the synthetic task: {prompt!r}")
    return operation, digits


def solve(prompt: str) -> str:
    operation, digits = parse_prompt(prompt)
    return OPERATIONS[operation](digits)


def is_correct(prompt: str, answer: str) -> bool:
    """The programmatic check: exactly the transformed string (surrounding spaces ignored)."""
    return answer.strip() == solve(prompt)


def score(prompt: str, answer: str) -> float:
    """Graded quality in [0, 1]: the fraction of positions that hold the right character,
    over the longer of the two strings. 1 exactly when the answer is correct."""
    target, answer = solve(prompt), answer.strip()
    longest = max(len(target), len(answer))
    return sum(a == b for a, b in zip(target, answer)) / longest


def _wrong_answer(prompt: str, rng: random.Random) -> str:
    """A plausible wrong answer: one of several typical mistakes, never the right one."""
    operation, digits = parse_prompt(prompt)
    right = OPERATIONS[operation](digits)
    while True:
        kind = rng.choice(("other_operation", "swap", "substitute", "drop", "repeat"))
        answer = list(right)
        if kind == "other_operation":
            other = rng.choice([op for op in OPERATIONS if op != operation])
            answer = list(OPERATIONS[other](digits))
        elif kind == "swap":
            i, j = rng.sample(range(len(answer)), 2)
            answer[i], answer[j] = answer[j], answer[i]
        elif kind == "substitute":
            i = rng.randrange(len(answer))
            answer[i] = rng.choice([d for d in "0123456789" if d != answer[i]])
        elif kind == "drop":
            del answer[rng.randrange(len(answer))]
        else:
            i = rng.randrange(len(answer))
            answer.insert(i, answer[i])
        candidate = "".join(answer)
        if candidate != right:
            return candidate


def _prompts(n: int, cfg: SyntheticConfig, rng: random.Random, exclude: set[str]) -> list[str]:
    prompts: list[str] = []
    seen = set(exclude)
    while len(prompts) < n:
        length = rng.randint(cfg.min_digits, cfg.max_digits)
        digits = "".join(rng.choice("0123456789") for _ in range(length))
        prompt = make_prompt(rng.choice(cfg.operations), digits)
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return prompts


def _check(cfg: SyntheticConfig) -> None:
    unknown = set(cfg.operations) - set(OPERATIONS)
    if unknown or not cfg.operations:
        raise ValueError(f"data.synthetic.operations: unknown {sorted(unknown)}; "
                         f"choose from {sorted(OPERATIONS)}")
    if not 2 <= cfg.min_digits <= cfg.max_digits:
        raise ValueError("data.synthetic needs 2 <= min_digits <= max_digits, got "
                         f"{cfg.min_digits}, {cfg.max_digits}")
    if cfg.k < 2:
        raise ValueError(f"data.synthetic.k must be >= 2, got {cfg.k}")


def _split_prompts(cfg: SyntheticConfig, rng: random.Random) -> dict[str, list[str]]:
    val = _prompts(cfg.n_val, cfg, rng, exclude=set())
    return {"val": val, "train": _prompts(cfg.n_train, cfg, rng, exclude=set(val))}


def _pair(prompt: str, rng: random.Random) -> dict:
    return {"prompt": prompt, "chosen": solve(prompt), "rejected": _wrong_answer(prompt, rng)}


def _unpaired(prompt: str, rng: random.Random, cfg: SyntheticConfig) -> dict:
    desirable = rng.random() < cfg.desirable_fraction
    completion = solve(prompt) if desirable else _wrong_answer(prompt, rng)
    return {"prompt": prompt, "completion": completion, "label": desirable}


def _ranking(prompt: str, rng: random.Random, cfg: SyntheticConfig) -> dict:
    """K distinct candidates, the right answer among them, ranked by `score` (ties share)."""
    candidates = [solve(prompt)]
    for _ in range(100 * cfg.k):
        if len(candidates) == cfg.k:
            break
        wrong = _wrong_answer(prompt, rng)
        if wrong not in candidates:
            candidates.append(wrong)
    rng.shuffle(candidates)
    scores = [score(prompt, c) for c in candidates]
    distinct = sorted(set(scores), reverse=True)
    return {"prompt": prompt, "completions": candidates,
            "ranks": [distinct.index(s) + 1 for s in scores]}  # 1 = best, as in Nectar


def splits(cfg: SyntheticConfig, fmt: str = "pairwise") -> dict[str, list[dict]]:
    """{"train": [...], "val": [...]} raw records of format `fmt` (pairwise | unpaired |
    ranked), on disjoint prompts, reproducible from `cfg.seed`."""
    _check(cfg)
    rng = random.Random(cfg.seed)
    make = {"pairwise": lambda p: _pair(p, rng),
            "unpaired": lambda p: _unpaired(p, rng, cfg),
            "ranked": lambda p: _ranking(p, rng, cfg)}
    if fmt not in make:
        raise ValueError(f"the synthetic task has no {fmt!r} records; it has {sorted(make)}")
    return {name: [make[fmt](p) for p in prompts]
            for name, prompts in _split_prompts(cfg, rng).items()}


def pairwise_splits(cfg: SyntheticConfig) -> dict[str, list[dict]]:
    return splits(cfg, "pairwise")
