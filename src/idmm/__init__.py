"""idmm: train Vision Transformers from scratch on small datasets (IDMM, Cao, Yu, Wu, ECCV 2022).

The public API: one function per verb of the command line, with the same key names. Names are
imported on first use (torch and timm take seconds), so `import idmm` and `idmm --help` are fast.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "make_config": "builders",
    "ablate": "commands.ablate",
    "compare": "commands.compare",
    "embed": "commands.embed",
    "evaluate_knn": "commands.evaluate",
    "evaluate_linear": "commands.evaluate",
    "export": "commands.export",
    "load_model": "commands.export",
    "predict": "commands.export",
    "finetune": "commands.finetune",
    "pretrain": "commands.pretrain",
    "run": "commands.run",
    "transfer": "commands.transfer",
    "Config": "config",
    "ConfigError": "config",
    "FinetuneConfig": "config",
    "PretrainConfig": "config",
    "RunConfig": "config",
    "DataError": "data.sources",
    "RunDir": "rundir",
}
__all__ = sorted([*_API, "__version__"])


def __getattr__(name: str):
    if name in _API:
        value = getattr(import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module 'idmm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
