"""Splits larger than memory: peak memory of split, train, evaluate and the baselines on a
synthetic image folder several times the memory they are allowed, and the throughput of a
split read from disk a batch at a time against the same split held in memory.

A synthetic ``root/<class>/<image>.png`` tree is generated under /tmp (never in the repo);
each stage runs in its own process, as the pipeline runs it, through the library calls the
stage scripts make: split (``imagefolder.load`` + ``write_splits``), one epoch of a small
CNN (``load_split`` + ``engine.fit``), evaluation (``load_split`` + ``engine.predict``), the
baselines (``select_baselines`` and their test scoring, both stages in one process). Its
peak resident memory (``wait4``'s ru_maxrss) and peak anonymous memory (/proc, polled) are
printed, for the full tree and for a quarter of it (hard links): they must not grow with the
dataset. The bound is stated above each stage's floor, the same stage's peak with 4 rows of
data (imports and kernels: torch alone is ~0.7 GiB resident here, whatever the data).
Not a test: minutes.

    python bench/out_of_core.py                    # 150k images at 64 px (1.7 GiB of splits)
    python bench/out_of_core.py --images 8000 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = 10
PHASES = ("split", "train", "evaluate", "baselines")
BASELINE_ROWS = 500  # baselines.max_rows: the train rows a baseline fits on
MIB = 1 << 20


def _write_images(job: tuple[str, int, int, int]) -> None:
    """Images ``start:stop`` at ``size`` px (the split decodes them to --size: upscaled)."""
    from PIL import Image

    root, start, stop, size = job
    rng = np.random.default_rng(start)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for i in range(start, stop):
        label = i % CLASSES
        # A class's colour and stripe frequency, smooth enough for PNG to compress, some noise.
        colour = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256])
        stripes = np.sin(ramp[:, None] * (label + 1) * 3 + ramp[None, :] * rng.uniform(0, 6))
        pixels = colour * 0.6 + 80 * stripes[..., None] + rng.normal(0, 4, (size, size, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(Path(root) / f"c{label}" / f"{i:07d}.png", compress_level=1)


def generate(root: Path, images: int, size: int) -> float:
    """The tree (kept between runs with the same size and count); seconds taken. Its PNGs
    are half ``size``, so the tree takes less disk; ``image_size`` is ``size``."""
    marker = root / "imagefolder.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"image_size": size, "n": images}:
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    for label in range(CLASSES):
        (root / f"c{label}").mkdir(parents=True)
    started = time.perf_counter()
    step = 2000
    jobs = [(str(root), s, min(s + step, images), size // 2) for s in range(0, images, step)]
    with Pool(os.cpu_count()) as pool:
        pool.map(_write_images, jobs)
    marker.write_text(json.dumps({"image_size": size, "n": images}))
    return time.perf_counter() - started


def quarter(root: Path, dest: Path) -> None:
    """A quarter of ``root``'s images per class, as hard links (no bytes copied)."""
    shutil.rmtree(dest, ignore_errors=True)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        (dest / folder.name).mkdir(parents=True)
        for file in files[: len(files) // 4]:
            os.link(file, dest / folder.name / file.name)
    shutil.copyfile(root / "imagefolder.json", dest / "imagefolder.json")


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def measure(phase: str, work: Path, env: dict[str, str], log: Path, floor: bool = False) -> dict:
    """Run ``phase`` in a child; its JSON line, seconds, peak RSS and peak anonymous MiB."""
    command = [sys.executable, __file__, "--child", phase, "--work", str(work)]
    command += ["--floor"] if floor else []
    started = time.perf_counter()
    with open(log, "a") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        anon = [0]

        def poll() -> None:  # RssAnon: the process's own heap, not its mapped libraries
            status = Path(f"/proc/{child.pid}/status")
            while child.returncode is None:
                try:
                    for line in status.read_text().splitlines():
                        if line.startswith("RssAnon:"):
                            anon[0] = max(anon[0], int(line.split()[1]))
                except OSError:
                    return
                time.sleep(0.02)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        watcher.join()
    seconds = time.perf_counter() - started
    if child.returncode:
        sys.exit(f"{phase} failed (exit {child.returncode}); see {log}")
    result = json.loads(log.read_text().strip().splitlines()[-1])
    return result | {"s": seconds, "rss": usage.ru_maxrss / 1024, "anon": anon[0] / 1024}


# ---- the children: one stage's work each --------------------------------------------------


def small_cnn(n_classes: int):
    """A small strided CNN: cheap per image, so one epoch over GiBs takes seconds."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Scale(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - 127.5) / 64.0

    return nn.Sequential(
        Scale(),
        nn.Conv2d(3, 16, 5, stride=4, padding=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, n_classes),
    )


def child(phase: str, work: Path, floor: bool) -> dict:
    """One stage's work on ``work``'s tree or splits; with ``floor``, only what costs memory
    whatever the data: its imports and a step on 4 rows (the stage's floor)."""
    if phase == "split":
        import sklearn.model_selection  # noqa: F401  (what the stage imports, for the floor)
        import torchvision.datasets  # noqa: F401

        from reprolab.data.fetch import check_arrays
        from reprolab.data.sources import imagefolder
        from reprolab.data.split import write_splits

        if floor:
            return {}
        arrays = imagefolder.load(work / "tree")
        check_arrays(arrays, "imagefolder")
        meta = write_splits(arrays, work / "splits", 0.1, 0.1, seed=0)
        sizes = {f.name: f.stat().st_size for f in (work / "splits").glob("*.npz")}
        return {"rows": meta["sizes"], "bytes": sizes}
    if phase == "baselines":
        return baselines(work, floor)
    import torch

    from reprolab.core.schema import ModelSpec, TrainParams
    from reprolab.learn.engine import fit, make_optimizer, predict
    from reprolab.learn.tensors import TensorData, load_split

    torch.set_num_threads(int(os.environ.get("OOC_THREADS", os.cpu_count())))
    model = small_cnn(CLASSES).to(memory_format=torch.channels_last)
    size = json.loads((work / "tree" / "imagefolder.json").read_text())["image_size"]
    tiny = TensorData(torch.zeros((4, 3, size, size), dtype=torch.uint8), torch.zeros(4).long())

    def split(name: str) -> TensorData:
        return tiny if floor else load_split(work / "splits" / f"{name}.npz", torch.device("cpu"))

    if phase == "gather":  # the data path alone: one epoch's batches, in memory then on disk
        order = torch.randperm(len(split("train").y), generator=torch.Generator().manual_seed(0))
        times = {}
        for mode, budget in (("memory", "100000"), ("disk", "0"), ("memory", "100000")):
            os.environ["REPROLAB_SPLIT_MEMORY_MB"] = budget
            train = split("train")
            started = time.perf_counter()
            for index in order.split(256):
                train.batch(index)
            times[mode] = 1000 * (time.perf_counter() - started) / len(order.split(256))
        return {"ms_per_batch": times}
    if phase in ("train", "throughput"):
        train, val = split("train"), split("val")
        opt = make_optimizer(model, ModelSpec(arch="cnn"), lr=1e-3, weight_decay=0.0)
        started, cpu = time.perf_counter(), time.process_time()
        fit(model, train, val, optimizer=opt, train_params=TrainParams(max_epochs=1),
            epochs=1, batch_size=256, seed=0, progress=False)  # fmt: skip
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        if phase == "train" and not floor:
            torch.save(model.state_dict(), work / "model.pt")
        digest = sum(float(p.double().sum()) for p in model.parameters())
        return {"rows_per_s": len(train) / seconds, "rows_per_cpu_s": len(train) / cpu,
                "on_disk": type(train.x).__name__ == "DiskRows", "weights_sum": digest}  # fmt: skip
    if not floor:
        model.load_state_dict(torch.load(work / "model.pt"))
    test = split("test")
    started = time.perf_counter()
    outputs = predict(model, test, memory_format=torch.channels_last)
    accuracy = float((outputs.argmax(1) == test.y).float().mean())
    return {"rows_per_s": len(test) / (time.perf_counter() - started), "accuracy": accuracy}


def baselines(work: Path, floor: bool) -> dict:
    """Stages baselines and evaluate_baselines: a logistic regression on BASELINE_ROWS train
    rows (read as picked), its C chosen on val, scored on test; val and test are scored a
    chunk at a time from their files. OOC_BASELINES_WHOLE=1: val and test read whole and
    flattened to float64 at once, as the stages did before (for contrast)."""
    import numpy as np
    import torch

    from reprolab.core.npz import open_npz
    from reprolab.learn.baselines import _flat, outputs_of, scored, select_baselines

    def split(name: str) -> dict:
        if floor:
            return {"x": np.zeros((4, 3, 8, 8), np.uint8), "y": np.array([0, 1, 0, 1])}
        members = open_npz(work / "splits" / f"{name}.npz")
        return {"x": members["x"], "y": members["y"].load()}

    train, val, test = split("train"), split("val"), split("test")
    whole = os.environ.get("OOC_BASELINES_WHOLE") == "1"
    if whole and not floor:
        for data in (val, test):
            data["x"] = data["x"].load()
    started = time.perf_counter()
    selected, fitted = select_baselines(
        ["logistic_regression"], train, val, "classification", 0, BASELINE_ROWS
    )
    if whole and not floor:  # the old scoring: the whole split as float64 at once
        outputs = outputs_of(fitted["logistic_regression"], "classification", _flat(test["x"]))
    else:
        outputs = scored(fitted["logistic_regression"], "classification", test["x"])
    accuracy = float((outputs.argmax(1) == torch.from_numpy(test["y"])).float().mean())
    return {"rows_per_s": (len(val["y"]) * 6 + len(test["y"])) / (time.perf_counter() - started),
            "accuracy": accuracy, "C": selected[0].value}  # fmt: skip


# ---- the parent ---------------------------------------------------------------------------


def stages(work: Path, env: dict[str, str], log: Path) -> dict[str, dict]:
    shutil.rmtree(work / "splits", ignore_errors=True)
    return {phase: measure(phase, work, env, log) for phase in PHASES}


def throughput(work: Path, env: dict[str, str], log: Path, repeats: int) -> None:
    """One epoch on ``work``'s splits (they fit in memory) read whole, then from disk."""
    speeds = {"memory": [], "disk": []}
    sums = set()
    for _ in range(repeats):  # interleaved, so drift hits both alike
        for mode, budget in (("memory", "100000"), ("disk", "0")):
            r = measure("throughput", work, env | {"REPROLAB_SPLIT_MEMORY_MB": budget}, log)
            assert r["on_disk"] == (mode == "disk")
            speeds[mode].append((r["rows_per_s"], r["rows_per_cpu_s"]))
            sums.add(r["weights_sum"])
    print(
        f"\nthroughput, one epoch on the quarter's splits (they fit), {repeats} repeats, "
        f"{env['OOC_THREADS']} torch thread(s):"
    )
    for i, what in enumerate(("wall", "CPU")):
        best = {m: max(s[i] for s in speeds[m]) for m in speeds}
        ratio = best["disk"] / best["memory"]
        print(f"  rows per {what} second, best of {repeats}: in memory {best['memory']:.0f}, "
              f"from disk {best['disk']:.0f}, disk/memory {ratio:.2f}")  # fmt: skip
        memory, disk = (statistics.median(s[i] for s in speeds[m]) for m in ("memory", "disk"))
        each = ", ".join(f"{d[i] / m[i]:.2f}" for m, d in zip(*speeds.values(), strict=True))
        print(f"  rows per {what} second, median: in memory {memory:.0f}, from disk {disk:.0f}, "
              f"disk/memory {disk / memory:.2f} (each pair: {each})")  # fmt: skip
    print(f"  same weights from disk and from memory: {len(sums) == 1}")
    gather = measure("gather", work, env, log)["ms_per_batch"]
    print(f"  the data path alone (TensorData.batch, 256 shuffled rows, .float() included): "
          f"{gather['memory']:.1f} ms a batch in memory, "
          f"{gather['disk']:.1f} ms from disk")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=150_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--bound-mib", type=float, default=512.0, help="above the floor")
    parser.add_argument("--budget-mib", default="64", help="REPROLAB_SPLIT_MEMORY_MB for stages")
    parser.add_argument("--in-memory", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "reprolab-ooc")
    parser.add_argument("--keep", action="store_true", help="keep the generated tree")
    parser.add_argument("--throughput-only", action="store_true", help="skip the full tree")
    parser.add_argument("--child")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--floor", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.work, args.floor)), flush=True)
        return

    env = os.environ | {
        "PYTHONPATH": str(REPO / "src"),
        "REPROLAB_SPLIT_MEMORY_MB": args.budget_mib,
        "OOC_THREADS": str(args.threads),
    }
    full, part = args.root / "full", args.root / "quarter"
    log = args.root / "children.log"
    made = generate(full / "tree", args.images, args.size)
    quarter(full / "tree", part / "tree")
    log.unlink(missing_ok=True)
    print(f"tree: {args.images} PNGs at {args.size // 2} px decoded to {args.size} px, "
          f"{folder_bytes(full / 'tree') / MIB:.0f} MiB on disk (generated in {made:.0f} s); "
          f"child output: {log}")  # fmt: skip
    phases = PHASES
    floors = {p: round(measure(p, full, env, log, floor=True)["rss"]) for p in phases}
    print(f"stated bound: peak RSS <= the stage's floor + {args.bound_mib:.0f} MiB, the floor "
          f"being its imports and one step on 4 rows (MiB: {floors}); "
          f"REPROLAB_SPLIT_MEMORY_MB={args.budget_mib}")  # fmt: skip
    results = {}
    for name, work in (("quarter", part), ("full", full)):
        results[name] = stages(work, env, log)
        split = results[name]["split"]
        total = sum(split["bytes"].values())
        print(f"\n{name}: splits {split['rows']}, {total / MIB:.0f} MiB "
              f"(train {split['bytes']['train.npz'] / MIB:.0f} MiB), "
              f"{total / MIB / args.bound_mib:.1f}x the bound")  # fmt: skip
        for phase, r in results[name].items():
            above = r["rss"] - floors[phase]
            verdict = "ok" if above <= args.bound_mib else "OVER THE BOUND"
            speed = f", {r['rows_per_s']:.0f} rows/s" if "rows_per_s" in r else ""
            speed += f" ({r['rows_per_cpu_s']:.0f} per CPU s)" if "rows_per_cpu_s" in r else ""
            print(f"  {phase:9s} {r['s']:6.1f} s  peak RSS {r['rss']:5.0f} MiB, {above:4.0f} "
                  f"above its floor ({verdict}), peak anonymous {r['anon']:5.0f} MiB"
                  f"{speed}")  # fmt: skip
        if work == part:  # then its disk for the full tree's splits
            throughput(part, env, log, args.repeats)
            shutil.rmtree(work / "splits")
            if args.throughput_only:
                return
    for phase in phases:
        q, f = results["quarter"][phase]["rss"], results["full"][phase]["rss"]
        print(f"peak RSS full/quarter, {phase}: {f / q:.2f}")
    if args.in_memory:  # the same epoch with the split in memory, as before: for contrast
        r = measure("train", full, env | {"REPROLAB_SPLIT_MEMORY_MB": "100000"}, log)
        print(f"train with the splits in memory: peak RSS {r['rss']:.0f} MiB, "
              f"{r['rss'] - floors['train']:.0f} above its floor, "
              f"{r['rows_per_s']:.0f} rows/s ({r['rows_per_cpu_s']:.0f} per CPU s)")  # fmt: skip
        r = measure("baselines", full, env | {"OOC_BASELINES_WHOLE": "1"}, log)
        print(f"baselines with val and test read whole and flattened at once: peak RSS "
              f"{r['rss']:.0f} MiB, {r['rss'] - floors['baselines']:.0f} above its floor, "
              f"{r['s']:.1f} s, test accuracy {r['accuracy']:.4f} (chunked: "
              f"{results['full']['baselines']['accuracy']:.4f})")  # fmt: skip

    if not args.keep:
        shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
