"""Make PtyRAD 1.0.0 importable on this machine (CPU torch, Python 3.11) without editing its files.

Two problems, both described in ``shared/PEERS.md``:

1. ``torchvision`` 0.28.0 from PyPI is a CUDA build. Next to CPU torch its
   compiled operators fail to register, so ``import torchvision`` raises
   ``RuntimeError: operator torchvision::nms does not exist``. PtyRAD needs
   only ``torchvision.transforms.functional.gaussian_blur``, which is pure
   torch. :func:`install` puts an empty ``torchvision`` package object (with the
   real package's search path) into ``sys.modules``, so the real pure-Python
   submodules load but ``torchvision/__init__.py``, which loads the compiled
   operators, never runs.
2. ``ptyrad/plotting/basic.py`` line 295 nests equal quotes in an f-string,
   legal only from Python 3.12. :func:`install` adds an import hook that
   compiles that module from its source with the inner quotes swapped; the file
   in the virtual environment is left as pip installed it.

Call :func:`install` before the first ``import ptyrad``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

_BAD = "{lr_iters['niter'][-1]}"
_GOOD = '{lr_iters["niter"][-1]}'
_MODULE = "ptyrad.plotting.basic"


def _shim_torchvision() -> None:
    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise ImportError("torchvision is not installed in this environment; PtyRAD needs it.")
    pkg = types.ModuleType("torchvision")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    pkg.__version__ = "shim (compiled ops not loaded)"
    sys.modules["torchvision"] = pkg


class _PatchedSourceLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname):
        source = self.get_data(self.path).decode("utf-8")
        if sys.version_info < (3, 12):
            source = source.replace(_BAD, _GOOD)
        return compile(source, self.path, "exec", dont_inherit=True)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.origin:
                spec.loader = _PatchedSourceLoader(fullname, spec.origin)
                return spec
        return None


def install() -> None:
    """Apply both work-arounds (idempotent)."""
    _shim_torchvision()
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
