"""What runs on a Dask worker for `cnncomp.batch`: the artifact plugin and the batch task. Imported only where
dask.distributed is installed (the `dask` extra)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

if TYPE_CHECKING:
    from cnncomp.api import CompiledModel


class ArtifactPlugin(WorkerPlugin):
    """Holds a compiled model's artifact bytes on a worker; the worker loads and verifies it (`cnncomp.load`) on
    its first batch and keeps it. Dask gives plugins to workers that join later too (a restarted one)."""

    def __init__(self, name: str, content: bytes, preprocessing: Mapping[str, Any] | None) -> None:
        self.name, self.content, self.preprocessing = name, content, preprocessing
        self._model: CompiledModel | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "content": self.content, "preprocessing": self.preprocessing}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["content"], state["preprocessing"])

    def model(self) -> CompiledModel:
        from cnncomp import api

        with self._lock:
            if self._model is None:
                # One core per call: a worker's threads run batches side by side.
                self._model = api.load(f"{self.name}.cnnx", content=self.content, threads=1,
                                       options={"progress": False})
            return self._model


def run_batch_on_worker(plugin_name: str, entries: list, batch: int) -> list:
    """`cnncomp.batch.run_batch` with the model of the worker's plugin."""
    from cnncomp.batch import run_batch

    plugin = get_worker().plugins[plugin_name]
    return run_batch(plugin.model(), entries, batch, plugin.preprocessing)


def dask_setup(worker: Any) -> None:
    """Preloaded into the worker processes of the LocalCluster `cnncomp run --workers` starts: Ctrl-C reaches
    the whole process group, and the client, which stops the cluster, is the one to handle it (each worker would
    print a traceback). The client also reports whatever fails on these workers (a task's error comes back with
    its batch, a lost worker as an error of the run), so their own logs stay quiet: at shutdown a worker whose
    heartbeat races the scheduler's close logs a traceback on the user's terminal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
