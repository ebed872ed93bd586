"""SimPO for prefopt: `prefopt-train objective=simpo` once this distribution is installed."""

from prefopt_simpo.simpo import SimPO, simpo_loss

__all__ = ["SimPO", "simpo_loss"]
