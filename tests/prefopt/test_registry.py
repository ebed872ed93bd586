"""Entry-point discovery, tested with temporary distributions on sys.path (no installs)."""

import sys
import textwrap

import pytest

from prefopt import registry


@pytest.fixture
def fake_dists(tmp_path, monkeypatch):
    """make(dist, {name: "module:attr"}, source={module: code}) puts a distribution on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.discover.cache_clear()
    registry.load.cache_clear()

    def make(dist, entry_points, sources=None):
        info = tmp_path / f"{dist}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[prefopt.objectives]\n{lines}")
        for module, code in (sources or {}).items():
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(code))

    yield make
    registry.discover.cache_clear()
    registry.load.cache_clear()
    for name in [m for m in sys.modules if m.startswith("fakeplugin")]:
        del sys.modules[name]


GOOD_PLUGIN = """
    from dataclasses import dataclass
    from prefopt.objective import BatchFormat, LossOutput, Objective, ObjectiveConfig

    class Hinge(Objective):
        batch_format = BatchFormat.PAIRWISE
        description = "hinge on margins"

        @dataclass
        class Config(ObjectiveConfig):
            beta: float = 1.0

        def loss(self, inputs):
            return LossOutput((1 - (inputs.chosen - inputs.rejected)).clamp(min=0).mean())
"""


def test_builtins_are_entry_points():
    plugins = registry.discover()
    assert plugins["dpo"].value == "prefopt.plugins.dpo:DPO"
    assert plugins["dpo"].distribution == "prefopt"
    assert registry.load("ipo").batch_format.value == "pairwise"


def test_third_party_plugin_is_found_and_loaded(fake_dists):
    fake_dists("hinge-dpo", {"hinge": "fakeplugin_hinge:Hinge"}, {"fakeplugin_hinge": GOOD_PLUGIN})
    assert registry.discover()["hinge"].origin == \
        "hinge-dpo==1.2.3 (hinge = fakeplugin_hinge:Hinge)"
    assert registry.load("hinge").Config().beta == 1.0


def test_two_distributions_claiming_one_name(fake_dists):
    fake_dists("alpha", {"twin": "fakeplugin_a:A"})
    fake_dists("beta", {"twin": "fakeplugin_b:B"})
    with pytest.raises(registry.PluginError) as err:
        registry.discover()
    message = str(err.value)
    assert "'twin'" in message and "alpha==1.2.3" in message and "beta==1.2.3" in message


def test_not_an_objective(fake_dists):
    fake_dists("oddity", {"odd": "fakeplugin_odd:thing"}, {"fakeplugin_odd": "thing = 42\n"})
    with pytest.raises(registry.PluginError, match=r"'odd' from oddity==1.2.3 .* is not a "
                                                   r"subclass of prefopt.objective.Objective"):
        registry.load("odd")


def test_broken_plugin_warns_at_registration_and_fails_when_selected(fake_dists):
    fake_dists("broken", {"broken": "fakeplugin_broken:X"},
               {"fakeplugin_broken": "import not_a_module_anywhere\n"})
    with pytest.warns(UserWarning, match="objective 'broken' from broken==1.2.3"):
        registry.register_configs()
    with pytest.raises(registry.PluginError, match="ModuleNotFoundError"):
        registry.load("broken")
    assert registry.load("dpo")  # the others are unaffected


def test_unknown_name_lists_and_suggests():
    with pytest.raises(registry.PluginError) as err:
        registry.load("dpoo")
    assert "Available objectives: dpo, ipo" in str(err.value)
    assert "Did you mean 'dpo'?" in str(err.value)
