"""prefopt-train's Hydra configs: the primary config (train.yaml) and its groups (model,
data, optimizer, scheduler, trainer, logger, reward); objectives and their presets come
from the plugins through the registry. YAML only: nothing to import."""

__all__: list[str] = []
