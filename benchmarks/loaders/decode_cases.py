"""Per-core ceilings: one process decoding (and transforming) the same files in a tight loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import simplejpeg
import torch
from PIL import Image
from torchvision.io import decode_jpeg

from lmdb_dataset.decode.transforms import train_transform

from ..common.harness import Case, Context, Result
from ..common.pipelines import classic_pipeline


def ceiling_files(ctx: Context) -> list[str]:
    """The first ~500 image files, spread over the classes, read once so they sit in the page cache."""
    files = ctx.files
    chosen = files[:: max(1, len(files) // ctx.args.ceiling_files)][: ctx.args.ceiling_files]
    for path in chosen:
        Path(path).read_bytes()
    return chosen


def read_file(path: str) -> bytes:
    """A file's bytes."""
    with open(path, "rb") as file:
        return file.read()


CEILINGS: dict[str, Callable[[str], Any]] = {
    "simplejpeg": lambda p: simplejpeg.decode_jpeg(read_file(p), colorspace="RGB"),
    "torchvision-decode_jpeg": lambda p: decode_jpeg(torch.frombuffer(bytearray(read_file(p)), dtype=torch.uint8)),
    "pillow": lambda p: Image.open(p).convert("RGB"),
}


def pipeline_ceiling(name: str) -> Callable[[str], Any]:
    """A per-image function of a full per-core train pipeline."""
    if name == "simplejpeg+v2-uint8":
        transform = train_transform()
        return lambda p: transform(torch.from_numpy(simplejpeg.decode_jpeg(read_file(p))).permute(2, 0, 1))
    transform = classic_pipeline("train")
    return lambda p: transform(Image.open(p).convert("RGB"))


def tight_loop(function: Callable[[str], Any]) -> Callable[[Context], Result]:
    """A case body: apply ``function`` to the ceiling files in a single process; images/s."""
    def run(ctx: Context) -> Result:
        files = ceiling_files(ctx)
        started = time.perf_counter()
        for path in files:
            function(path)
        return {"value": len(files) / (time.perf_counter() - started)}
    return run


def decode_cases() -> list[Case]:
    """Per-core ceilings of decoders and of whole train pipelines."""
    cases = [Case(f"decode/{name}", "img/s", tight_loop(fn), lambda c: 3.0) for name, fn in CEILINGS.items()]
    cases += [Case(f"decode/pipeline/{name}", "img/s", tight_loop(pipeline_ceiling(name)), lambda c: 5.0)
              for name in ("simplejpeg+v2-uint8", "pillow+v1-float")]
    return cases
