"""softtargets: offline soft targets for knowledge distillation (Hinton, Vinyals, Dean 2015)."""

from softtargets.errors import SofttargetsError

__version__ = "0.1.0"
__all__ = ["SofttargetsError", "__version__"]
