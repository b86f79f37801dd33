"""idmm: train Vision Transformers from scratch on small datasets (IDMM, Cao, Yu, Wu, ECCV 2022)."""

from .api import evaluate_knn, evaluate_linear, load_run_config, make_config, pretrain
from .compare import compare, transfer
from .config import Config, ConfigError
from .data.sources import DataError
from .export import export, load_model, predict
from .finetune import finetune
from .pipeline import run

__version__ = "0.1.0"
__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "__version__",
    "compare",
    "evaluate_knn",
    "evaluate_linear",
    "export",
    "finetune",
    "load_model",
    "load_run_config",
    "make_config",
    "predict",
    "pretrain",
    "run",
    "transfer",
]
