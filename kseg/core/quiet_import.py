"""TensorFlow's import without its start-up INFO lines, when ``TF_CPP_MIN_LOG_LEVEL`` asks for that.

Since TF 2.19 some lines are logged through absl before its logging is set up, and those ignore
``TF_CPP_MIN_LOG_LEVEL`` (tensorflow/tensorflow#100442): on CPUs where oneDNN is on, every command started with
two "oneDNN custom operations are on" INFO lines. A finder on ``sys.meta_path`` sees the first ``import
tensorflow`` (wherever it comes from, so ``kseg.client``'s REST path still never imports it), runs it with file
descriptor 2 going to a temporary file, and writes back every line that is not an INFO line or absl's notice
about them: TensorFlow's warnings and errors still show.

Standard library only: ``kseg/__init__.py`` installs it before anything imports TensorFlow.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

#: Lines dropped from TensorFlow's import: absl's INFO lines (``I0000 00:00:...``) and its notice about them.
_HIDDEN = re.compile(rb"^(I\d{4} \d\d:\d\d:[\d.]+ |WARNING: All log messages before absl::InitializeLog\(\))")


class _QuietLoader(importlib.abc.Loader):
    """The real loader, its ``exec_module`` run with INFO lines hidden; the module keeps the real loader."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader
        _run_hiding_info_lines(lambda: self.loader.exec_module(module))


class QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    def __init__(self, module: str = "tensorflow"):
        self.module = module

    def find_spec(self, name, path, target=None):
        if name != self.module:
            return None
        uninstall(name)  # once: later imports find the module in sys.modules
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def _run_hiding_info_lines(run) -> None:
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            run()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = b"".join(line for line in captured if not _HIDDEN.match(line))
            if kept:
                os.write(2, kept)


def install(module: str = "tensorflow") -> None:
    """Hide the INFO lines of ``module``'s import (TensorFlow; tests use a stand-in), unless it is imported
    already or INFO lines are wanted."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    wanted = not level.isdigit() or int(level) < 1
    present = any(isinstance(f, QuietTensorFlowImport) and f.module == module for f in sys.meta_path)
    if wanted or present or module in sys.modules:
        return
    sys.meta_path.insert(0, QuietTensorFlowImport(module))


def uninstall(module: str = "tensorflow") -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, QuietTensorFlowImport) and f.module == module)]
