"""The gguf package's constants (value types, quantization block sizes, metadata key names) without the rest of
the package.

`import gguf` runs the package's `__init__`, which imports numpy, yaml and gguf's reader, writer and metadata
code: 170 ms of the 450 ms a `ggufpair fix` of a tiny file took (`python -X importtime`), of which the constants
themselves are 16 ms. ggufpair needs only the constants, so it loads the installed gguf's own `constants.py`
(the pinned version's file, not a copy: nothing can drift) as a module of its own. Where gguf is already
imported (the tests, a tune that writes GGUFs), its module is used instead.

The enums are IntEnums: a value from either module equals, and hashes as, the same value from the other, so
dictionaries keyed by one are read with the other. No code compares them by identity.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_NAME = "ggufpair.format._gguf_constants_file"


def _load() -> ModuleType:
    if "gguf.constants" in sys.modules:
        return sys.modules["gguf.constants"]
    spec = importlib.util.find_spec("gguf")  # finds the package without running its __init__
    if spec is None or spec.origin is None:
        raise ImportError("ggufpair needs the gguf package (pip install gguf)")
    file = Path(spec.origin).parent / "constants.py"
    spec = importlib.util.spec_from_file_location(_NAME, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"{file}: gguf's constants module cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module  # enums pickle by module name: it must be findable
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_NAME]
        raise
    return module


_constants = _load()
GGML_QUANT_SIZES = _constants.GGML_QUANT_SIZES
GGMLQuantizationType = _constants.GGMLQuantizationType
GGUFValueType = _constants.GGUFValueType
Keys = _constants.Keys
LlamaFileType = _constants.LlamaFileType

__all__ = ["GGML_QUANT_SIZES", "GGMLQuantizationType", "GGUFValueType", "Keys", "LlamaFileType"]
