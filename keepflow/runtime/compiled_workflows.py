"""Workflow modules compiled once per worker process, not once per run.

The sandbox imports each workflow's module afresh for every run. Without a usable .pyc
(PYTHONDONTWRITEBYTECODE, as container images often set, or a read-only tree) that means
compiling the source again each time: about 11 ms of CPU per run, measured with py-spy on
bench/throughput.py. The code object is immutable, so one compile serves every run; it is also
the code the worker started with, as it should be.
"""

from __future__ import annotations

import importlib.machinery
import sys
import threading


class _CompiledOnceLoader(importlib.machinery.SourceFileLoader):
    """A source loader that keeps the code object of each file it compiled."""

    _codes: dict[str, object] = {}
    _lock = threading.Lock()

    def get_code(self, fullname):
        with self._lock:
            code = self._codes.get(self.path)
            if code is None:
                code = self._codes[self.path] = super().get_code(fullname)
        return code


class _WorkflowModuleFinder:
    """Finds the named modules as usual, but loads them with `_CompiledOnceLoader`."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader:
            spec.loader = _CompiledOnceLoader(fullname, spec.origin)
        return spec


_WORKFLOW_MODULES = _WorkflowModuleFinder()


def compile_once(workflow_classes) -> None:
    """Load the modules defining `workflow_classes` (and their packages) through `_CompiledOnceLoader`."""
    for cls in workflow_classes:
        parts = cls.__module__.split(".")
        _WORKFLOW_MODULES.names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    if _WORKFLOW_MODULES not in sys.meta_path:
        sys.meta_path.insert(0, _WORKFLOW_MODULES)
