"""Entry-point discovery, tested with temporary distributions on sys.path (no installs)."""

import importlib
import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from prefopt import registry

BIN = Path(sys.executable).parent


@pytest.fixture
def fake_dists(tmp_path, monkeypatch):
    """make(dist, {name: "module:attr"}, sources={module: code}, config_paths={label: pkg},
    files={relative path: text}) puts a distribution on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.clear_caches()

    def make(dist, entry_points, sources=None, config_paths=None, files=None):
        info = tmp_path / f"{dist}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        sections = {registry.ENTRY_POINT_GROUP: entry_points,
                    registry.CONFIG_PATH_GROUP: config_paths or {}}
        (info / "entry_points.txt").write_text("".join(
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
            for group, eps in sections.items() if eps))
        for module, code in (sources or {}).items():
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(code))
        for relative, text in (files or {}).items():
            (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / relative).write_text(textwrap.dedent(text))
        # New files in a directory already on sys.path: drop the finders' stale listings.
        importlib.invalidate_caches()
        registry.clear_caches()

    yield make
    registry.clear_caches()
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


def run_cli(*args, tmp_path, script="prefopt-train"):
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run([str(BIN / script), *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)


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


def test_metadata_is_read_once(fake_dists, compose, monkeypatch):
    fake_dists("hinge-dpo", {"hinge": "fakeplugin_hinge:Hinge"}, {"fakeplugin_hinge": GOOD_PLUGIN})
    calls = []
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    registry.discover(), registry.config_paths(), registry.presets(), registry.load("hinge")
    compose("objective=hinge")
    compose("objective=ipo")
    assert len(calls) == 1


def test_only_the_selected_plugin_is_imported(fake_dists, compose):
    fake_dists("lazy", {"lazy_a": "fakeplugin_lazy_a:Hinge", "lazy_b": "fakeplugin_lazy_b:Hinge"},
               {"fakeplugin_lazy_a": GOOD_PLUGIN, "fakeplugin_lazy_b": GOOD_PLUGIN})
    cfg = compose("objective=lazy_a", "objective.beta=2.5")
    assert cfg.objective.name == "lazy_a" and cfg.objective.beta == 2.5
    assert "fakeplugin_lazy_a" in sys.modules
    assert "fakeplugin_lazy_b" not in sys.modules


def test_third_party_config_is_a_typed_schema(fake_dists, compose):
    fake_dists("hinge-dpo", {"hinge": "fakeplugin_hinge:Hinge"}, {"fakeplugin_hinge": GOOD_PLUGIN})
    with pytest.raises(ConfigCompositionException) as err:
        compose("objective=hinge", "objective.bta=1")
    assert "bta" in str(err.value.__cause__)
    with pytest.raises(ConfigCompositionException) as err:
        compose("objective=hinge", "objective.beta=high")
    assert "could not be converted to Float" in str(err.value.__cause__)


def test_two_distributions_claiming_one_name(fake_dists):
    fake_dists("alpha", {"twin": "fakeplugin_a:A"})
    fake_dists("beta", {"twin": "fakeplugin_b:B"})
    with pytest.raises(registry.PluginError) as err:
        registry.discover()
    message = str(err.value)
    assert "'twin'" in message and "alpha==1.2.3" in message and "beta==1.2.3" in message
    assert "fakeplugin_a:A" in message and "fakeplugin_b:B" in message


def test_a_third_party_never_shadows_a_builtin(fake_dists):
    fake_dists("evil-dpo", {"dpo": "fakeplugin_evil:DPO"})
    with pytest.raises(registry.PluginError, match=r"two distributions declare the objective "
                                                   r"'dpo': .*evil-dpo==1\.2\.3.*prefopt==0\.1\.0"):
        registry.discover()


@pytest.mark.slow  # a prefopt-train subprocess: ~4 s of imports
def test_duplicate_name_on_the_command_line(fake_dists, tmp_path):
    fake_dists("evil-dpo", {"dpo": "fakeplugin_evil:DPO"})
    # One line, before Hydra starts, whichever objective was asked for.
    result = run_cli("objective=ipo", tmp_path=tmp_path)
    assert result.returncode == 1
    assert "prefopt-train: error: two distributions declare the objective 'dpo'" in result.stderr
    assert "Traceback" not in result.stderr


def test_not_an_objective(fake_dists):
    fake_dists("oddity", {"odd": "fakeplugin_odd:thing"}, {"fakeplugin_odd": "thing = 42\n"})
    with pytest.raises(registry.PluginError, match=r"'odd' from oddity==1.2.3 .* is not a "
                                                   r"subclass of prefopt.objective.Objective"):
        registry.load("odd")


def test_incompatible_api_version(fake_dists):
    future = GOOD_PLUGIN + "\n    Hinge.api_version = 99\n"
    fake_dists("future", {"future": "fakeplugin_future:Hinge"}, {"fakeplugin_future": future})
    with pytest.raises(registry.PluginError, match=r"'future' from future==1.2.3 .* targets "
                                                   r"plugin API version 99, this prefopt "
                                                   r"speaks version 1"):
        registry.load("future")


def test_config_that_hydra_cannot_type(fake_dists):
    untyped = GOOD_PLUGIN.replace("beta: float = 1.0", "beta: object = None")
    fake_dists("loose", {"loose": "fakeplugin_loose:Hinge"}, {"fakeplugin_loose": untyped})
    with pytest.raises(registry.PluginError, match=r"'loose' from loose==1.2.3 .* its Config "
                                                   r"is not a valid Hydra schema"):
        registry.load("loose")


def test_broken_plugin_not_selected_warns_and_nothing_else_breaks(fake_dists, compose):
    # Metadata alone shows this one cannot load (its package is gone): a warning.
    fake_dists("gone", {"gone": "fakeplugin_gone:X"})
    # This one fails only when imported, and is never imported unless selected.
    fake_dists("crashy", {"crashy": "fakeplugin_crashy:X"},
               {"fakeplugin_crashy": "raise RuntimeError('boom')\n"})
    with pytest.warns(registry.PluginWarning,
                      match=r"objective 'gone' from gone==1\.2\.3 \(gone = fakeplugin_gone:X\) "
                            r"cannot be loaded: its package 'fakeplugin_gone' is not installed"):
        cfg = compose("objective=ipo")
    assert cfg.objective.name == "ipo"
    assert "fakeplugin_crashy" not in sys.modules
    assert registry.load("dpo")


BROKEN = ("objective 'broken' from broken==1.2.3 (broken = fakeplugin_broken:X) failed to "
          "load: ModuleNotFoundError: No module named 'not_a_module_anywhere'")


def test_broken_plugin_selected_names_distribution_and_failure(fake_dists, compose):
    fake_dists("broken", {"broken": "fakeplugin_broken:X"},
               {"fakeplugin_broken": "import not_a_module_anywhere\n"})
    with pytest.raises(registry.PluginError) as err:
        compose("objective=broken")
    assert str(err.value) == BROKEN


@pytest.mark.slow  # a prefopt-train subprocess: ~4 s of imports
def test_broken_plugin_selected_on_the_command_line(fake_dists, tmp_path):
    fake_dists("broken", {"broken": "fakeplugin_broken:X"},
               {"fakeplugin_broken": "import not_a_module_anywhere\n"})
    result = run_cli("objective=broken", tmp_path=tmp_path)
    assert result.returncode == 1
    assert BROKEN in result.stderr and "Traceback" not in result.stderr


def test_unknown_name_lists_and_suggests():
    with pytest.raises(registry.PluginError) as err:
        registry.load("dpoo")
    assert "Available objectives: aot, apo, attribute_model, bco, cpo, discopop, dpo" \
        in str(err.value)
    assert "Did you mean 'dpo'?" in str(err.value)


def test_unknown_names_in_overrides_and_sweeps():
    assert registry.unknown_objectives(
        ["-m", "objective=dpo,ipoo", "objective.beta=1", "+objective=choice(kto,dpp)",
         "trainer.max_steps=1"]) == ["ipoo", "dpp"]
    assert registry.unknown_objectives(["objective=ipo"]) == []


@pytest.mark.slow  # a prefopt-train subprocess: ~4 s of imports
def test_unknown_name_on_the_command_line(tmp_path):
    result = run_cli("objective=dpoo", tmp_path=tmp_path)
    assert result.returncode == 1
    assert "Available options in 'objective'" in result.stderr  # Hydra's list
    assert "prefopt-train: unknown objective 'dpoo'. Available objectives: aot, apo, " \
        "attribute_model, bco" in result.stderr
    assert "Did you mean 'dpo'?" in result.stderr


PRESET = """
    # A preset is a config of group `objective` that extends a plugin's schema.
    defaults:
      - hinge
      - _self_

    beta: 3.0
"""


def test_presets_from_a_config_path(fake_dists, compose):
    fake_dists("hinge-dpo", {"hinge": "fakeplugin_hinge:Hinge"}, {"fakeplugin_hinge": GOOD_PLUGIN},
               config_paths={"hinge-dpo": "fakeplugin_presets.conf"},
               files={"fakeplugin_presets/__init__.py": "raise RuntimeError('never imported')\n",
                      "fakeplugin_presets/conf/objective/hinge_strong.yaml": PRESET})
    assert registry.presets()["hinge_strong"].source.distribution == "hinge-dpo"
    cfg = compose("objective=hinge_strong")
    assert cfg.objective.name == "hinge" and cfg.objective.beta == 3.0
    assert compose("objective=hinge_strong", "objective.beta=4").objective.beta == 4.0
    with pytest.raises(ConfigCompositionException) as err:
        compose("objective=hinge_strong", "objective.betaa=4")
    assert "betaa" in str(err.value.__cause__)
    with pytest.raises(MissingConfigException) as err:
        compose("objective=nosuch")
    assert "hinge_strong" in str(err.value)  # Hydra lists presets among the options
    assert "fakeplugin_presets" not in sys.modules  # found on disk, not imported


def test_preset_named_like_an_objective_is_an_error(fake_dists):
    fake_dists("sneaky", {}, config_paths={"sneaky": "fakeplugin_sneaky.conf"},
               files={"fakeplugin_sneaky/__init__.py": "",
                      "fakeplugin_sneaky/conf/objective/dpo.yaml": "beta: 9.0\n"})
    with pytest.raises(registry.PluginError, match=r"the preset 'dpo' .* from sneaky==1\.2\.3 "
                                                   r".* has the name of the objective "
                                                   r"prefopt==0\.1\.0"):
        registry.presets()


def test_missing_config_path_warns(fake_dists):
    fake_dists("nopkg", {}, config_paths={"nopkg": "fakeplugin_nowhere.conf"})
    with pytest.warns(registry.PluginWarning, match=r"config path nopkg==1\.2\.3 .* is "
                                                    r"skipped: package 'fakeplugin_nowhere'"):
        found = registry.presets()
    assert {p.source.distribution for p in found.values()} == {"prefopt"}  # built-ins only


# -- prefopt's own presets ----------------------------------------------------------------

def test_builtin_presets_are_listed_from_prefopts_config(compose, capsys):
    import prefopt.conf
    from prefopt.training.cli import plugins_entry

    rpo = registry.presets()["rpo"]
    assert rpo.file == Path(prefopt.conf.__file__).parent / "objective" / "rpo.yaml"
    assert (rpo.source.distribution, rpo.source.module) == ("prefopt", "prefopt.conf")
    assert compose("objective=rpo").objective.name == "mix"
    assert "(presets: dapo, dr_grpo, gspo, rpo)" in registry.unknown_name_message("rpoo")
    assert registry.unknown_objectives(["objective=rpo"]) == []
    plugins_entry([])
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("rpo "))
    assert row.split()[1:4] == ["prefopt", "0.1.0", "preset"]


def test_third_party_preset_named_like_a_builtin_preset_is_an_error(fake_dists):
    fake_dists("copycat", {}, config_paths={"copycat": "fakeplugin_copycat.conf"},
               files={"fakeplugin_copycat/__init__.py": "",
                      "fakeplugin_copycat/conf/objective/rpo.yaml": "beta: 9.0\n"})
    with pytest.raises(registry.PluginError, match=r"two distributions ship the preset 'rpo': "
                                                   r"prefopt==0\.1\.0 \(prefopt = prefopt\.conf\)"
                                                   r" .*rpo\.yaml\) and copycat==1\.2\.3"):
        registry.presets()


def test_third_party_objective_named_like_a_builtin_preset_is_an_error(fake_dists):
    fake_dists("rpo-dist", {"rpo": "fakeplugin_rpo:Hinge"}, {"fakeplugin_rpo": GOOD_PLUGIN})
    with pytest.raises(registry.PluginError, match=r"the objective rpo-dist==1\.2\.3 \(rpo = "
                                                   r"fakeplugin_rpo:Hinge\) has the name of "
                                                   r"prefopt's built-in preset 'rpo'"):
        registry.presets()
