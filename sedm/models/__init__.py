"""The STEDM network: style encoder, aggregation block, layout+style conditioned UNet, save/load.

Networks only; noise schedules and the sampling loop live in :mod:`sedm.diffusion`.
"""

from sedm.models.io import load_model, save_model
from sedm.models.stedm import StedmConfig, StedmModel, StyleCondition

__all__ = ["StedmConfig", "StedmModel", "StyleCondition", "load_model", "save_model"]
