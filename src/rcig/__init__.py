"""rcig: dataset distillation with Convexified Implicit Gradients (Loo et al., ICML 2023)."""

__version__ = "0.1.0"

from rcig.errors import RcigError  # noqa: E402

__all__ = ["RcigError", "__version__"]
