"""prefopt.testing itself: check_objective passes the built-ins and refuses the online
ones, check_loss runs the tensor checks in order, the declaration and entry-point checks
catch each kind of violation, and the documented names import from prefopt.testing."""

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import prefopt.testing
from prefopt import registry
from prefopt.objective import ObjectiveConfig
from prefopt.plugins.dpo import DPO
from prefopt.plugins.ipo import IPO
from prefopt.testing import (
    REFERENCE_FREE_NOT_APPLICABLE,
    ConformanceError,
    check_declaration,
    check_entry_point,
    check_objective,
)

NOT_APPLICABLE = REFERENCE_FREE_NOT_APPLICABLE


def tensor_checks(ran):
    """The tensor checks of one configuration, in the order they ran."""
    return [c for c in ran if c not in ("declaration", "entry point") and
            not c.startswith("config ")]


def test_dpo_conforms_in_every_mode():
    ran = check_objective(DPO, "dpo", configs=[
        DPO.Config(),
        DPO.Config(reference_free=True, length_normalize=True, label_smoothing=0.1)])
    assert ran.count("reference-free") == 1  # only the reference-free configuration
    assert {"entry point", "config round trip", "config unknown key", "config types"} <= set(ran)
    assert tensor_checks(ran) == [
        "loss and gradients", "metric names", "batch order",
        "loss and gradients", "metric names", "reference-free", "batch order"]


BUILTIN_CHECKS = {
    "sft": ["loss and gradients", "metric names", "reference-free", "batch order"],
    "ipo": ["loss and gradients", "metric names", "batch order"],
    "kto": ["loss and gradients", "metric names", "batch order"],
    "kwise": ["loss and gradients", "metric names", "batch order", "listing order"],
    "reward_bt": ["loss and gradients", "metric names", NOT_APPLICABLE, "batch order"],
    "reward_pl": ["loss and gradients", "metric names", NOT_APPLICABLE, "batch order",
                  "listing order"],
    "steerlm": ["loss and gradients", "metric names", "reference-free", "batch order"],
    "attribute_model": ["loss and gradients", "metric names", NOT_APPLICABLE, "absent values",
                        "batch order", "attribute order"],
}


@pytest.mark.parametrize("name,checks", list(BUILTIN_CHECKS.items()))
def test_builtins_of_every_format_conform(name, checks):
    ran = check_objective(registry.load(name), name)
    assert tensor_checks(ran) == checks


def test_every_builtin_is_checked():
    builtins = {name for name, info in registry.discover().items()
                if info.distribution == "prefopt"}
    # dpo: in every mode, above. The kit checks objectives on recorded data; online ones
    # (prompts in, samples scored at every step) have their own tests
    # (tests/plugins/test_reinforce.py, test_ppo.py, tests/integration/test_online.py).
    assert builtins == {"dpo", *BUILTIN_CHECKS, *ONLINE, *CHECKED_IN_THEIR_OWN_TESTS}


ONLINE = {"reinforce", "ppo", "grpo"}
# Objectives whose own test file, tests/plugins/test_<name>.py, runs the kit on them.
CHECKED_IN_THEIR_OWN_TESTS = {"orpo", "cpo", "slic", "robust_dpo", "bco", "nca", "apo", "sppo",
                              "exo", "discopop", "aot", "mix"}


@pytest.mark.parametrize("name", sorted(CHECKED_IN_THEIR_OWN_TESTS))
def test_objectives_checked_in_their_own_tests_are(name):
    source = (Path(__file__).parents[2] / "plugins" / f"test_{name}.py").read_text()
    assert re.search(rf'check_objective\(\w+, "{name}"', source)


@pytest.mark.parametrize("name", sorted(ONLINE))
def test_online_objectives_are_refused_by_the_kit_with_a_reason(name):
    with pytest.raises(ConformanceError, match="prompts"):
        check_objective(registry.load(name), name)


@pytest.mark.parametrize("toy,orders", [("Margin", ["batch order"]),
                                        ("Desirability", ["batch order"]),
                                        ("Listwise", ["batch order", "listing order"]),
                                        ("Conditioned", ["batch order"])], indirect=["toy"])
def test_the_base_cases_pass(toy, orders, run):
    assert run(toy) == ["loss and gradients", "metric names", "reference-free", *orders]


def test_the_attribute_model_base_case_passes(toys, run):
    assert run(toys.Regression) == ["loss and gradients", "metric names", NOT_APPLICABLE,
                                    "absent values", "batch order", "attribute order"]


# -- declaration and entry point --------------------------------------------------------

def test_declaration_checks(toys):
    class Undescribed(toys.Margin):
        pass

    Undescribed.__doc__ = None
    with pytest.raises(ConformanceError, match=r"neither `description` nor a docstring"):
        check_declaration(Undescribed)

    class Incomplete(toys.Margin):
        """Config has a field without a default."""

        @dataclass
        class Config(ObjectiveConfig):
            beta: float = field(default=1.0)
            gamma: float = field(kw_only=True)

    with pytest.raises(ConformanceError, match=r"fields without a default: \['gamma'\]"):
        check_declaration(Incomplete)

    class Future(toys.Margin):
        api_version = 2

    with pytest.raises(ConformanceError, match=r"api_version is 2, this prefopt speaks plugin "
                                               r"API version 1"):
        check_declaration(Future)


def test_entry_point_checks(toys):
    with pytest.raises(ConformanceError, match=r"no objective 'margin' is installed: declare "
                                               r"`margin = \"<module>:Margin\"`"):
        check_entry_point(toys.Margin, "margin")
    with pytest.raises(ConformanceError, match=r"prefopt==0\.1\.0 \(dpo = prefopt\.plugins\.dpo"
                                               r":DPO\) loads prefopt\.plugins\.dpo\.DPO, not "
                                               r"prefopt\.plugins\.ipo\.IPO"):
        check_entry_point(IPO, "dpo")


# -- the public names -------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[3]
# Where plugin authors are told what to import from the kit.
DOCUMENTED = [ROOT / "docs" / "plugins.md",
              *sorted((ROOT / "examples" / "prefopt-simpo").rglob("*.py")),
              *sorted((ROOT / "examples" / "prefopt-simpo").rglob("*.md"))]
_IMPORT = re.compile(r"from prefopt\.testing import (?:\(([^)]*)\)|([^\n]*))")
_ATTRIBUTE = re.compile(r"prefopt\.testing\.(\w+)")


def documented_names() -> set[str]:
    """The names docs/plugins.md and examples/prefopt-simpo import or cite from
    prefopt.testing."""
    names = set()
    for path in DOCUMENTED:
        text = path.read_text()
        for match in _IMPORT.finditer(text):
            names |= {n.strip() for n in (match.group(1) or match.group(2)).split(",")}
        names |= set(_ATTRIBUTE.findall(text))
    return names - {""}


def test_documented_names_import_from_prefopt_testing():
    names = documented_names()
    assert {"check_objective", "compose_objective", "ConformanceError"} <= names
    assert [n for n in sorted(names) if not hasattr(prefopt.testing, n)] == []
    assert names <= set(prefopt.testing.__all__)
    assert [n for n in prefopt.testing.__all__ if not hasattr(prefopt.testing, n)] == []
