"""Verifiable rewards: 1 when a completion's answer matches the record's gold `answer`.

The reward of exact-answer tasks (arithmetic, GSM8K-style maths, short factual answers),
where a program, not a model, says whether an answer is right ("reinforcement learning with
verifiable rewards": Lambert et al., "Tülu 3: Pushing Frontiers in Open Language Model
Post-Training", arXiv:2411.15124, 2024). Registered as the reward `exact_match`
(`reward=exact_match`, or `reward.function=exact_match`); the gold answer is the prompt
record's `answer` field, which reaches the function as a keyword argument
(prefopt.online.rewards).

**Extraction** (`extract_answer`): the answer a completion gives is, in this order,

1. the content of its last `\\boxed{...}` (braces nested inside are kept);
2. else the text after its last `####` (GSM8K's answer marker);
3. else the text after its last `answer:` or `answer is` (any case);
4. else the whole completion.

**Matching** (`answers_match`), of the extracted answer against the gold one:

- as text, after `normalise`: surrounding whitespace stripped, runs of whitespace made one
  space, lower case, a final full stop dropped: " The Cat. " matches "the  cat";
- or as numbers, compared exactly (`fractions.Fraction`, no float rounding): an optional
  sign, digits with optional `,` thousands separators, an optional decimal part, or a
  fraction `a/b`: "19", "19.0", " 19 ", "+19", "19.000" all match 19; "1,000" matches
  "1000"; "0.5" matches "1/2". When the gold answer is a number and the extracted text is
  not one, the last number in it is compared ("so the sum is 19" matches 19).

**math-verify.** With HuggingFace's `math-verify` installed (`pip install
'prefopt[verify]'`), `exact_match(backend="auto")` (the default) also accepts what
`math_verify.verify(parse(gold), parse(answer))` accepts (LaTeX, symbolic equality:
"\\frac{1}{2}" and "0.5"), in addition to the matches above, so an answer the built-in
matcher accepts is never refused. `backend="builtin"` ignores it (the same rewards on every
machine); `backend="math_verify"` requires it.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from fractions import Fraction
from typing import Literal

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+")
_MARKERS = (re.compile(r"####"), re.compile(r"answer\s*(?::|is)", re.IGNORECASE))


def normalise(text: str) -> str:
    """Whitespace collapsed and stripped, lower case, one final full stop dropped."""
    text = " ".join(text.split()).lower()
    return text[:-1].rstrip() if text.endswith(".") else text


def as_number(text: str) -> Fraction | None:
    """`text` (normalised) as an exact number, if all of it is one; else None."""
    text = normalise(text)
    if not text or _NUMBER.fullmatch(text) is None:
        return None
    numerator, _, denominator = text.replace(",", "").partition("/")
    try:
        value = Fraction(numerator)
        return value / Fraction(denominator) if denominator else value
    except (ValueError, ZeroDivisionError):
        return None


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i]
            depth -= 1
    return None  # unclosed: not an answer


def extract_answer(completion: str) -> str:
    """The answer a completion gives (the module docstring says how), stripped."""
    boxed = _last_boxed(completion)
    if boxed is not None:
        return boxed.strip()
    for marker in _MARKERS:
        found = list(marker.finditer(completion))
        if found:
            return completion[found[-1].end():].strip()
    return completion.strip()


def answers_match(answer: str, gold: str) -> bool:
    """Whether `answer` (already extracted) matches `gold`, as text or as numbers."""
    if normalise(answer) == normalise(gold):
        return True
    gold_number = as_number(gold)
    if gold_number is None:
        return False
    number = as_number(answer)
    if number is None:
        numbers = _NUMBER.findall(answer)
        number = as_number(numbers[-1]) if numbers else None
    return number is not None and number == gold_number


def math_verify_available() -> bool:
    return importlib.util.find_spec("math_verify") is not None


def _math_verify_match(answer: str, gold: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse(gold), parse(answer)))


def exact_match(*, backend: Literal["auto", "builtin", "math_verify"] = "auto"):
    """The reward factory `exact_match`: returns fn(prompt, completion, answer) -> 1.0 when
    the completion's extracted answer matches the record's gold `answer`, else 0.0.

    `backend`: `auto` adds math-verify's verdict when it is installed, `builtin` never
    uses it, `math_verify` requires it (an error naming the extra to install if absent).
    """
    if backend == "math_verify" and not math_verify_available():
        raise ImportError("reward.kwargs.backend=math_verify needs the math-verify package: "
                          "pip install 'prefopt[verify]'")
    use_math_verify = backend == "math_verify" or (backend == "auto"
                                                   and math_verify_available())
    log.info("exact_match: %s", "built-in matcher and math-verify" if use_math_verify
             else "built-in matcher")

    def reward(prompt, completion: str, answer) -> float:
        gold, extracted = str(answer), extract_answer(completion)
        if answers_match(extracted, gold):
            return 1.0
        return float(use_math_verify and _math_verify_match(completion, gold))

    reward.__qualname__ = f"exact_match(backend={backend!r})"
    return reward
