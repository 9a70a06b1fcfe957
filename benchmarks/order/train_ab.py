"""Training A/B: does a sequential reader train as well as random sampling?

scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes, shipped inside the
scikit-learn package) are upscaled to 16x16, written as JPEGs into a class-sorted ImageFolder
(80% train, stratified; the other 20% is the test set) and converted twice: with the default
(shuffled) record order and in folder order (records stored class by class). A small CNN with
BatchNorm is trained with random sampling (``LMDBImageDataset`` + ``shuffle=True``),
``ChunkShuffleSampler`` and ``LMDBIterableDataset`` (2 persistent DataLoader workers), several
seeds each (Adam, cosine learning-rate decay), and scored on the test set (BatchNorm in eval mode, i.e. with its
running statistics).

``chunk_size`` and ``pool_size`` are scaled to the dataset so that the readers mix as little as
at ImageNet scale with the defaults (repeat co-occurrence ~1.7x random's: ``pool_size`` ~
``sqrt(chunk_size * N / 2)``); with the library defaults one pool would hold this whole dataset
(a full shuffle). Target: the mean final accuracy of each sequential reader within 1 point of
random's on the default conversion. The class-sorted layout is run with the same pools (8 chunks:
~6 classes per batch of 32) and with ``pool_size = chunk_size`` (a batch from one or two chunks,
i.e. one or two classes, as 0.1's sampler gave on such a file).

Writes a JSON (default: benchmarks/data/results/order/train_ab.json, a scratch folder);
``markdown(results)`` renders its section of RESULTS.md. ``--output benchmarks/order/train_ab.json``
replaces the committed results and re-renders benchmarks/RESULTS.md.

Example:
    python -m benchmarks.order.train_ab --workdir /tmp/train_ab --output benchmarks/order/train_ab.json
"""

from __future__ import annotations

import argparse
import inspect
import pathlib
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from lmdb_dataset import ChunkShuffleSampler, LMDBImageDataset, LMDBIterableDataset, convert_image_folder
from lmdb_dataset.order.quality import ClassLocalityWarning

from .. import report

SIZE = 16
TARGET_POINTS = 1.0
"""Target: each sequential reader's mean accuracy on the default conversion within this many points of random's."""
SHUFFLED = "default conversion (shuffled)"


def write_digits(root: pathlib.Path, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Write the train split as a class-sorted ImageFolder; return the test split as tensors."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(digits.target == c))[:len(np.flatnonzero(
        digits.target == c)) // 5] for c in range(10)])
    is_test = np.zeros(len(images), dtype=bool)
    is_test[test] = True
    big = [np.asarray(Image.fromarray(im).resize((SIZE, SIZE), Image.BILINEAR).convert("RGB")) for im in images]
    for i in np.flatnonzero(~is_test):
        folder = root / f"digit_{digits.target[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(big[i]).save(folder / f"{i:04d}.jpg", quality=95)
    test_x = torch.from_numpy(np.stack([big[i] for i in test])).permute(0, 3, 1, 2).contiguous()
    return test_x, torch.from_numpy(digits.target[test])


def convert(src: pathlib.Path, dst: pathlib.Path, *, class_sorted: bool) -> None:
    # The record order option: ``order`` ("shuffled" default, "folder"), or 0.1's ``shuffle``.
    if "order" in inspect.signature(convert_image_folder).parameters:
        options = {"order": "folder"} if class_sorted else {}
    else:
        options = {"shuffle": not class_sorted}
    convert_image_folder(src, dst, workers=1, overwrite=True, progress=False, **options)


def model() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def loader(reader: str, path: pathlib.Path, *, seed: int, batch_size: int, chunk_size: int,
           pool_size: int) -> tuple[DataLoader, object]:
    options = {"batch_size": batch_size, "num_workers": 2, "persistent_workers": True}
    if reader == "iterable":
        dataset = LMDBIterableDataset(path, output="tensor", chunk_size=chunk_size, pool_size=pool_size, seed=seed,
                                      batch_size=batch_size)
        return DataLoader(dataset, **options), dataset
    dataset = LMDBImageDataset(path, output="tensor")
    if reader == "random":
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, shuffle=True, generator=generator, **options), None
    sampler = ChunkShuffleSampler(dataset, chunk_size=chunk_size, pool_size=pool_size, seed=seed)
    return DataLoader(dataset, sampler=sampler, **options), sampler


def train(reader: str, path: pathlib.Path, test: tuple[torch.Tensor, torch.Tensor], *, seed: int, epochs: int,
          batch_size: int, chunk_size: int, pool_size: int) -> float:
    torch.manual_seed(seed)
    net = model()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    data, epoch_setter = loader(reader, path, seed=seed, batch_size=batch_size, chunk_size=chunk_size,
                                pool_size=pool_size)
    # Cosine decay to 0: the final accuracy is the trained model's, not the noise of the last steps.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(data))
    for epoch in range(epochs):
        if epoch_setter is not None:
            epoch_setter.set_epoch(epoch)
        net.train()
        for images, labels in data:
            loss = nn.functional.cross_entropy(net(images.float() / 255), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()
    with torch.no_grad():
        predictions = net(test[0].float() / 255).argmax(1)
    return 100.0 * float((predictions == test[1]).float().mean())


def row(run: dict, base: float) -> str:
    """A run's table row: its accuracies, their mean and the difference to random's mean."""
    mean = statistics.fmean(run["accuracy"])
    return (f"| {run['layout']} | {run['reader']} | {run['pool_size'] if run['reader'] != 'random' else ''} | "
            f"{', '.join(f'{a:.1f}' for a in run['accuracy'])} | {mean:.2f} | {mean - base:+.2f} |")


def header(seeds: int) -> list[str]:
    return [f"| layout | reader | pool_size | test accuracy, seeds 0..{seeds - 1} (%) | mean | vs random |",
            "|---|---|---|---|---|---|"]


def markdown(results: dict) -> str:
    """The section of RESULTS.md for a saved run: settings, accuracies and the target's verdict."""
    settings, runs = results["settings"], results["runs"]
    base = statistics.fmean(next(r["accuracy"] for r in runs if r["reader"] == "random"))
    gaps = {r["reader"]: statistics.fmean(r["accuracy"]) - base for r in runs
            if r["layout"] == SHUFFLED and r["reader"] != "random"}
    met = all(abs(gap) <= TARGET_POINTS for gap in gaps.values())
    seconds = f"; {results['seconds']} s of training" if "seconds" in results else ""
    lines = ["## Training A/B (order quality in accuracy)", "", *report.provenance_lines(results),
             f"Settings: {settings['epochs']} epochs, batch {settings['batch_size']}, chunk_size "
             f"{settings['chunk_size']}, pool_size {settings['pool_size']}, {settings['seeds']} seeds{seconds}.", "",
             *header(settings["seeds"]), *(row(r, base) for r in runs), "",
             f"Target (each sequential reader's mean within {TARGET_POINTS:g} point of random's on the "
             f"{SHUFFLED}): {'met' if met else 'missed'}: "
             + ", ".join(f"{reader} {gap:+.2f}" for reader, gap in gaps.items()) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/train_ab"),
                        help="where the ImageFolder and the datasets are written (default /tmp/train_ab)")
    parser.add_argument("--seeds", type=int, default=5, help="training seeds per reader (default 5)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs (default 15)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--chunk-size", type=int, default=16, help="chunk_size of both readers (default 16)")
    parser.add_argument("--pool-size", type=int, default=128, help="pool_size of both readers (default 128)")
    parser.add_argument("--output", type=pathlib.Path, default=report.SCRATCH / "order" / "train_ab.json",
                        help="results file (JSON; default benchmarks/data/results/order/train_ab.json; "
                             "benchmarks/order/train_ab.json replaces the committed one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    folder = args.workdir / "digits"
    if not folder.exists():
        test = write_digits(folder, seed=0)
        torch.save(test, args.workdir / "test.pt")
    test = torch.load(args.workdir / "test.pt")
    layouts = {SHUFFLED: args.workdir / "shuffled.lmdb",
               "class-sorted layout": args.workdir / "sorted.lmdb"}
    for name, path in layouts.items():
        if not path.exists():
            convert(folder, path, class_sorted=name.startswith("class"))
    options = {"epochs": args.epochs, "batch_size": args.batch_size, "chunk_size": args.chunk_size,
               "pool_size": args.pool_size}
    results = {**report.provenance("order.train_ab", argv), "settings": {**options, "seeds": args.seeds}, "runs": []}
    shuffled, class_sorted = layouts.values()
    runs = [(SHUFFLED, shuffled, reader, args.pool_size)
            for reader in ("random", "chunk sampler", "iterable")]
    runs += [("class-sorted layout", class_sorted, reader, pool_size)
             for pool_size in (args.pool_size, args.chunk_size) for reader in ("chunk sampler", "iterable")]
    print("\n".join(header(args.seeds)))
    started = time.perf_counter()
    base = None
    for name, path, reader, pool_size in runs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ClassLocalityWarning)  # expected on the class-sorted layout
            accuracies = [train(reader, path, test, seed=seed, **{**options, "pool_size": pool_size})
                          for seed in range(args.seeds)]
        base = statistics.fmean(accuracies) if base is None else base
        results["runs"].append({"layout": name, "reader": reader, "pool_size": pool_size, "accuracy": accuracies})
        print(row(results["runs"][-1], base), flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{results['seconds']} s")
    report.save(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
