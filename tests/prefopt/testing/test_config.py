"""The config checks (prefopt.testing.config): the round trip through prefopt-train's
Hydra config, and what the kit cannot derive or compose."""

import importlib
import sys
import textwrap

import pytest

from prefopt import registry
from prefopt.testing import ConformanceError, check_config

LISTY = """
    from dataclasses import dataclass, field
    from prefopt.objective import BatchFormat, LossOutput, Objective, ObjectiveConfig

    class Listy(Objective):
        '''An objective whose Config holds a list.'''

        batch_format = BatchFormat.PAIRWISE

        @dataclass
        class Config(ObjectiveConfig):
            weights: list[float] = field(default_factory=lambda: [1.0, 2.0])
            scale: float | None = None

        def loss(self, inputs):
            return LossOutput((inputs.chosen - inputs.rejected).mean())
"""


@pytest.fixture
def install(tmp_path, monkeypatch):
    """install(source) -> the class 'Listy' of `source`, declared as the objective 'listy'
    by a distribution on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(source):
        info = tmp_path / "listy-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: listy\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            "[prefopt.objectives]\nlisty = fakeplugin_listy:Listy\n")
        (tmp_path / "fakeplugin_listy.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        registry.clear_caches()
        return importlib.import_module("fakeplugin_listy").Listy

    yield make
    registry.clear_caches()
    sys.modules.pop("fakeplugin_listy", None)


def test_config_round_trip_needs_values_it_cannot_derive(install):
    listy = install(LISTY)
    with pytest.raises(ConformanceError, match=r"cannot derive an override for "
                                               r"Listy\.Config\.weights .* pass "
                                               r"values=\{'weights': <a value>\}"):
        check_config(listy, "listy")
    # An Optional[float] gets a float; a list comes from the author.
    assert check_config(listy, "listy", values={"weights": [0.5, 0.25, 4.0]}) == [
        "config round trip", "config unknown key", "config types"]
    with pytest.raises(ConformanceError, match=r"values= names fields that Listy\.Config "
                                               r"does not have: \['wieghts'\]"):
        check_config(listy, "listy", values={"weights": [1.0], "wieghts": [1.0]})


def test_config_that_does_not_compose(install):
    untyped = install(LISTY.replace("scale: float | None = None", "scale: object = None"))
    with pytest.raises(ConformanceError, match=r"`prefopt-train objective=listy ` does not "
                                               r"compose: .* its Config is not a valid Hydra "
                                               r"schema"):
        check_config(untyped, "listy", values={"weights": [1.0], "scale": 2.0})


def test_config_that_keeps_a_forced_unknown_key(install):
    """A Config that lets `+objective.<key>=1` through (its own __setattr__ bypasses the
    base's refusal) keeps a setting the objective never reads: a failure."""
    lenient = install(LISTY.replace(
        "scale: float | None = None",
        "scale: float | None = None\n\n"
        "            def __setattr__(self, key, value):\n"
        "                object.__setattr__(self, key, value)"))
    with pytest.raises(ConformanceError, match=r"`\+objective\.not_a_field_of_this_config=1` "
                                               r"was accepted"):
        check_config(lenient, "listy", values={"weights": [1.0]})
