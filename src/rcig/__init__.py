"""rcig: dataset distillation with Convexified Implicit Gradients (Loo et al., ICML 2023).

    import rcig
    distilled = rcig.distill("fashion_mnist", ipc=1, out="runs/fmnist1")   # RCIG
    rcig.save(distilled, "fmnist1.safetensors"); again = rcig.load("fmnist1.safetensors")
"""

__version__ = "0.1.0"

from rcig.errors import RcigError  # noqa: E402


def __getattr__(name):  # lazy: `import rcig` stays fast and torch-free until needed
    if name in ("save", "load", "DistilledSet"):
        import rcig.io

        return getattr(rcig.io, name)
    if name == "distill":
        from rcig.algorithm.runner import distill

        return distill
    raise AttributeError(f"module 'rcig' has no attribute {name!r}")


__all__ = ["DistilledSet", "RcigError", "__version__", "distill", "load", "save"]
