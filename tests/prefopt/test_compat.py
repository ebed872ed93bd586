"""Modules that moved when the core was grouped by domain still import from their old
paths, as the very same module objects, with a warning naming the new path."""

import importlib
import sys

import pytest

from prefopt._compat import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_the_new_module(old):
    new = importlib.import_module(MOVED[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED[old]}"):
        module = importlib.import_module(old)
    assert module is new
    assert module.__spec__.name == MOVED[old]  # it still knows where it lives


def test_from_imports_of_old_paths():
    sys.modules.pop("prefopt.reward", None)
    with pytest.warns(DeprecationWarning):
        from prefopt.reward import RewardScorer
    from prefopt.steer.scorer import RewardScorer as moved

    assert RewardScorer is moved


def test_unknown_modules_still_fail():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("prefopt.no_such_module")


def test_the_old_train_module_path_is_gone_naming_the_new_one():
    """`prefopt.train` is the API's function: the old module path would overwrite it."""
    sys.modules.pop("prefopt.train", None)
    with pytest.raises(ModuleNotFoundError, match=r"prefopt\.train\(\).*moved to "
                                                  r"prefopt\.training\.train"):
        importlib.import_module("prefopt.train")


def test_prefopt_train_stays_the_function_after_every_old_import():
    import prefopt

    for old in sorted(MOVED):
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning):
            importlib.import_module(old)
    importlib.import_module("prefopt.training.train")  # the run's module, by its own name
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("prefopt.train")
    from prefopt import train

    assert callable(train) and not isinstance(train, type(sys))
    assert prefopt.train is train and train.__module__ == "prefopt.api"
