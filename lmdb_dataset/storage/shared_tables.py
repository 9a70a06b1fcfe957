"""Per-sample tables in one shared-memory block: DataLoader workers map them, whatever the start method.

A dataset's labels, sample order and record offsets take about 48 bytes a record (61 MB for
ImageNet's 1.28M images). ``fork`` shares numpy arrays copy-on-write, but ``spawn`` and
``forkserver`` (Python 3.14's default on Linux) unpickle a private copy into every worker:
8 ranks x 32 workers would hold 15 GB of copies. :class:`SharedTables` moves its tables into
one shared-memory tensor the first time it is pickled; ``multiprocessing`` (which torch
teaches to send shared tensors by handle) then sends a handle to the same pages, and the
worker rebuilds its numpy views on them. Until then the tables are plain numpy arrays, so
reading metadata (``lmdb-dataset info``, ``verify``) never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

_Layout = list[tuple[str, int | None, tuple[int, ...] | None]]
"""(name, offset in the block, shape) of each table; offset and shape are None for an absent table."""


class SharedTables:
    """Named int64 arrays as read-only numpy views, moved into one shared-memory block when first pickled.

    Args:
        arrays: Name -> array (any shape; converted to int64), or None for a table that is absent.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray | None]) -> None:
        self._block: Any = None  # the shared torch tensor, once pickled
        self._views: dict[str, np.ndarray | None] = {}
        for name, array in arrays.items():
            view = None if array is None else np.ascontiguousarray(array, dtype=np.int64)
            if view is not None:
                view.flags.writeable = False  # shared by every process: nobody writes into another's tables
            self._views[name] = view

    def __getitem__(self, name: str) -> np.ndarray | None:
        return self._views[name]

    @property
    def nbytes(self) -> int:
        """Bytes of the tables."""
        return sum(view.nbytes for view in self._views.values() if view is not None)

    def _layout(self) -> _Layout:
        layout: _Layout = []
        total = 0
        for name, view in self._views.items():
            layout.append((name, None, None) if view is None else (name, total, view.shape))
            total += 0 if view is None else view.size
        return layout

    def _rebuild(self, layout: _Layout) -> None:
        flat = self._block.numpy()
        for name, offset, shape in layout:
            if offset is None or shape is None:
                self._views[name] = None
                continue
            view = flat[offset:offset + int(np.prod(shape))].reshape(shape)
            view.flags.writeable = False
            self._views[name] = view

    def __getstate__(self) -> dict[str, Any]:
        layout = self._layout()
        if self._block is None:  # first pickle: move the tables into shared memory, here too
            import torch

            block = torch.empty(max(1, sum(view.size for view in self._views.values() if view is not None)),
                                dtype=torch.int64)
            flat = block.numpy()
            for name, offset, shape in layout:
                if offset is not None:
                    view = self._views[name]
                    assert shape is not None and view is not None  # a table has an offset only when present
                    flat[offset:offset + int(np.prod(shape))] = view.reshape(-1)
            self._block = block.share_memory_()
            self._rebuild(layout)
        return {"_block": self._block, "_layout": layout}  # the views are rebuilt on the other side

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._block, self._views = state["_block"], {}
        self._rebuild(state["_layout"])
