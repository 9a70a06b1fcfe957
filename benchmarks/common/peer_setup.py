"""The peer loaders (peers.py) that import here, prepared once per corpus."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .corpus import corpus_key


def prepared_peers(data: Path, folder: Path, files: list[str], wanted: set[str]) -> tuple[dict[str, tuple[Any, Path]],
                                                                               dict[str, str]]:
    """Peers that import, prepared (cached) for ``folder``; and ``name -> reason`` for the others."""
    try:
        peers = importlib.import_module(".peers", __package__)
    except Exception as error:
        return {}, {"all peers": f"benchmarks/common/peers.py does not import: {type(error).__name__}: {error}"}
    ready: dict[str, tuple[Any, Path]] = {}
    missing = dict(peers.unavailable_peers())
    for name, peer in peers.available_peers().items():
        if name not in wanted:
            continue
        work_dir = data / "peers" / corpus_key(files) / name
        marker = work_dir / "prepared.txt"
        try:
            if not marker.exists():
                print(f"preparing peer {name} in {work_dir}", flush=True)
                work_dir.mkdir(parents=True, exist_ok=True)
                marker.write_text(str(peer.prepare(folder, work_dir)))
            ready[name] = (peer, Path(marker.read_text()))
        except Exception as error:
            missing[name] = f"prepare failed: {type(error).__name__}: {error}"
    return ready, missing


def peer_names() -> list[str]:
    """Names of the peers whose library imports (none if peers.py is missing or broken)."""
    try:
        return list(importlib.import_module(".peers", __package__).available_peers())
    except Exception:
        return []


# --------------------------------------------------------------------------- rounds
