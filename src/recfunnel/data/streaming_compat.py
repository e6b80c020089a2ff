"""Import Mosaic ``streaming`` without torchvision.

``streaming/__init__`` imports ``streaming.vision``, which imports torchvision. We do not install
torchvision (PyPI's build is CUDA-only and breaks beside a CPU torch, failing with "operator
torchvision::nms does not exist"), and recfunnel uses nothing from ``streaming.vision``. So on that
failure we drop the half-imported modules, register an empty ``streaming.vision`` and import again.
"""

import sys
import types

__all__ = ["import_streaming"]


def import_streaming() -> types.ModuleType:
    """Return the ``streaming`` package, importable with or without a working torchvision."""
    try:
        import streaming
    except (ImportError, RuntimeError):
        for name in list(sys.modules):
            if name.split(".")[0] in ("torchvision", "streaming"):
                del sys.modules[name]
        sys.modules["streaming.vision"] = types.ModuleType("streaming.vision")
        import streaming
    return streaming
