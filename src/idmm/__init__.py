"""idmm: train Vision Transformers from scratch on small datasets (IDMM, Cao, Yu, Wu, ECCV 2022).

The public API: one function per verb of the command line, with the same key names.
"""

from .builders import make_config
from .commands.ablate import ablate
from .commands.compare import compare
from .commands.evaluate import evaluate_knn, evaluate_linear
from .commands.export import export, load_model, predict
from .commands.finetune import finetune
from .commands.pretrain import pretrain
from .commands.run import run
from .commands.transfer import transfer
from .config import Config, ConfigError, FinetuneConfig, PretrainConfig, RunConfig
from .data.sources import DataError
from .rundir import RunDir

__version__ = "0.1.0"
__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "FinetuneConfig",
    "PretrainConfig",
    "RunConfig",
    "RunDir",
    "__version__",
    "ablate",
    "compare",
    "evaluate_knn",
    "evaluate_linear",
    "export",
    "finetune",
    "load_model",
    "make_config",
    "predict",
    "pretrain",
    "run",
    "transfer",
]
