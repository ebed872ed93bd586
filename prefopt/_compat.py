"""Old import paths of modules that moved when the core was grouped by domain.

`import prefopt.rewards` (say) still works and gives the very module object of
`prefopt.online.rewards`, with a DeprecationWarning naming the new path. A finder on
`sys.meta_path` is asked only after the normal import machinery has found nothing, so
it never shadows a real module; no file is left behind at the old place.

One old path is gone for good: `prefopt.train` is now the function `prefopt.train()` (the
Python API), and a module imported as `prefopt.train` would replace that attribute of the
package. Importing it fails with a message naming `prefopt.training.train` (`REMOVED`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

# old dotted path -> new dotted path
MOVED = {
    "prefopt.attributes": "prefopt.data.attributes",
    "prefopt.cli": "prefopt.training.cli",
    "prefopt.config": "prefopt.training.config",
    "prefopt.label": "prefopt.steer.label",
    "prefopt.module": "prefopt.training.module",
    "prefopt.output": "prefopt.data.output",
    "prefopt.plots": "prefopt.training.plots",
    "prefopt.progress": "prefopt.training.progress",
    "prefopt.reward": "prefopt.steer.scorer",
    "prefopt.rewards": "prefopt.online.rewards",
    "prefopt.rollout": "prefopt.online.rollout",
    "prefopt.value": "prefopt.online.value",
}

# old dotted path -> why it cannot be imported any more
REMOVED = {
    "prefopt.train": "prefopt.train is the function prefopt.train() now (the Python API); "
                     "the module of one training run moved to prefopt.training.train: "
                     "import it from there",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in REMOVED:
            raise ModuleNotFoundError(REMOVED[fullname], name=fullname)
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        # The import system stamps the alias's spec on whatever this returns; keep the
        # real one to restore in exec_module, so the module still knows where it lives.
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._real_spec


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
