"""rcig: dataset distillation with Convexified Implicit Gradients (Loo et al., ICML 2023).

    import rcig
    distilled = rcig.distill("fashion_mnist", ipc=1, out="runs/fmnist1")   # RCIG
    rcig.evaluate(distilled)                     # the paper's protocol: {"no_aug": {...}, "aug": {...}}
    rcig.save(distilled, "fmnist1.safetensors"); again = rcig.load("fmnist1.safetensors")
    train = again.dataset(); test = again.test_set()   # torch Datasets, preprocessed alike

``import rcig`` loads no torch: each name below is imported on first use (PEP 562).
"""

from rcig.errors import RcigError
from rcig.version import __version__

# public name -> the module that defines it
_LAZY = {
    "distill": "rcig.run.driver",
    "evaluate": "rcig.evaluation.suite",
    "baseline_set": "rcig.evaluation.baselines",
    "DistilledSet": "rcig.io",
    "load": "rcig.io",
    "save": "rcig.io",
    "real_test_set": "rcig.io",
    "import_set": "rcig.interop",
    "export": "rcig.interop",
}

__all__ = sorted(["RcigError", "__version__", *_LAZY])


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'rcig' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
