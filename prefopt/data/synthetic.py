"""The built-in synthetic task: transform a digit string, checkably.

A prompt names an operation and a digit string, e.g. `sort 5213`; the answer is the
string after the operation, `1235`. A program knows the right answer, so the task yields
preference pairs (a correct answer over a plausible wrong one), a correctness check and a
graded score that later objectives reuse as rewards and rankings.

Attributed records (SteerLM) use a third operation whose answer depends on attributes: the
prompt `pick 827491` holds distinct digits, and the answer lists `length` of them in
ascending (`order` 0) or descending (`order` 1) order, the smallest or largest first:
order 1, length 3 gives `987`. Some answers are corrupted on purpose, and `quality` (0..4)
says how many positions are wrong (4 - wrong). All three attributes are measured from the
response itself (`measure_attributes`), so a generation's obedience is checkable.
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
    corrupted_fraction: float = 0.3
    """Share of attributed records whose response is corrupted (quality below 4)."""


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


def _split_prompts(cfg: SyntheticConfig, rng: random.Random, make=None
                   ) -> dict[str, list[str]]:
    make = make or _prompts
    val = make(cfg.n_val, cfg, rng, exclude=set())
    return {"val": val, "train": make(cfg.n_train, cfg, rng, exclude=set(val))}


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


# -- attributed records: `pick` ----------------------------------------------------------
PICK = "pick"
QUALITY_MAX = 4


def attribute_specs(cfg: SyntheticConfig) -> list[dict]:
    """The schema of the attributed task (see the module docstring)."""
    return [{"name": "quality", "min": 0, "max": QUALITY_MAX},
            {"name": "order", "min": 0, "max": 1},
            {"name": "length", "min": 1, "max": cfg.max_digits}]


def pick_digits(prompt: str) -> str:
    operation, _, digits = prompt.strip().partition(" ")
    if operation != PICK or not digits.isdigit() or len(set(digits)) != len(digits):
        raise ValueError(f"not a `pick` prompt of the synthetic task: {prompt!r}")
    return digits


def pick_answer(prompt: str, order: int, length: int) -> str:
    """The right answer: `length` digits of the prompt, ascending (0) or descending (1)."""
    return "".join(sorted(pick_digits(prompt), reverse=bool(order)))[:length]


def measure_attributes(prompt: str, response: str) -> dict[str, int | None]:
    """The attributes a response has, measured from it: `length` its characters, `order`
    0 / 1 when it is strictly ascending / descending (None when neither, or shorter than
    2), `quality` 4 minus the positions where it differs from the right answer of its
    length (the nearer of the two orders); 0 for anything that is not a plausible answer."""
    digits, response = pick_digits(prompt), response.strip()
    length = len(response)
    pairs = list(zip(response, response[1:]))
    order = None
    if pairs and all(a < b for a, b in pairs):
        order = 0
    elif pairs and all(a > b for a, b in pairs):
        order = 1
    if not response.isdigit() or length > len(digits):
        return {"quality": 0, "order": order, "length": length}
    wrong = min(sum(a != b for a, b in zip(response, pick_answer(prompt, o, length)))
                for o in (0, 1))
    return {"quality": max(0, QUALITY_MAX - wrong), "order": order, "length": length}


def steering_requests(prompts: list[str], seed: int = 0) -> list[dict[str, int]]:
    """What to ask of a steered policy on `pick` prompts: the best quality, and a length
    and an order drawn uniformly from those the prompt allows."""
    rng = random.Random(seed)
    requests = []
    for prompt in prompts:
        order, length = rng.randint(0, 1), rng.randint(1, len(pick_digits(prompt)))
        # One digit has no order: the data never label it, so it is not asked for either.
        requests.append({"quality": QUALITY_MAX, "length": length} if length == 1 else
                        {"quality": QUALITY_MAX, "order": order, "length": length})
    return requests


def _pick_prompts(n: int, cfg: SyntheticConfig, rng: random.Random, exclude: set[str]
                  ) -> list[str]:
    prompts: list[str] = []
    seen = set(exclude)
    while len(prompts) < n:
        digits = "".join(rng.sample("0123456789", rng.randint(cfg.min_digits, cfg.max_digits)))
        prompt = make_prompt(PICK, digits)
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return prompts


def _corrupt(answer: str, prompt: str, rng: random.Random) -> str:
    """A different string of the same length: two positions swapped, or a digit replaced
    by one the prompt lacks, or one position repeated over its neighbour."""
    absent = [d for d in "0123456789" if d not in pick_digits(prompt)]
    while True:
        chars = list(answer)
        kind = rng.choice(("swap", "substitute", "repeat"))
        if kind == "swap" and len(chars) >= 2:
            i, j = rng.sample(range(len(chars)), 2)
            chars[i], chars[j] = chars[j], chars[i]
        elif kind == "substitute" and absent:
            chars[rng.randrange(len(chars))] = rng.choice(absent)
        elif kind == "repeat" and len(chars) >= 2:
            i = rng.randrange(len(chars) - 1)
            chars[i + 1] = chars[i]
        candidate = "".join(chars)
        if candidate != answer:
            return candidate


def _attributed(prompt: str, rng: random.Random, cfg: SyntheticConfig) -> dict:
    order, length = rng.randint(0, 1), rng.randint(1, len(pick_digits(prompt)))
    response = pick_answer(prompt, order, length)
    if rng.random() < cfg.corrupted_fraction:
        response = _corrupt(response, prompt, rng)
    return {"prompt": prompt, "response": response,
            "attributes": measure_attributes(prompt, response)}


def splits(cfg: SyntheticConfig, fmt: str = "pairwise") -> dict[str, list[dict]]:
    """{"train": [...], "val": [...]} raw records of format `fmt` (pairwise | unpaired |
    ranked | attributed | prompts), on disjoint prompts, reproducible from `cfg.seed`.
    Every format but attributed has the same prompts: online objectives train on the
    pairwise task's training prompts and validate on its held-out ones."""
    _check(cfg)
    rng = random.Random(cfg.seed)
    make = {"pairwise": lambda p: _pair(p, rng),
            "unpaired": lambda p: _unpaired(p, rng, cfg),
            "ranked": lambda p: _ranking(p, rng, cfg),
            "attributed": lambda p: _attributed(p, rng, cfg),
            "prompts": lambda p: {"prompt": p}}
    if fmt not in make:
        raise ValueError(f"the synthetic task has no {fmt!r} records; it has {sorted(make)}")
    if fmt == "attributed" and cfg.max_digits > 10:
        raise ValueError("the attributed task's prompts hold distinct digits: "
                         f"data.synthetic.max_digits must be <= 10, got {cfg.max_digits}")
    prompts = _split_prompts(cfg, rng, _pick_prompts if fmt == "attributed" else None)
    return {name: [make[fmt](p) for p in group] for name, group in prompts.items()}


def pairwise_splits(cfg: SyntheticConfig) -> dict[str, list[dict]]:
    return splits(cfg, "pairwise")
