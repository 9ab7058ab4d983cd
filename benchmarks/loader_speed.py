"""Input-pipeline speed: sdmae's packed format + `sdmae bench data` against the PIL + torchvision ImageFolder +
RandomResizedCrop DataLoader (batch 64) on the same JPEG folder, in one run, alternating `--rounds` times.

    python benchmarks/loader_speed.py ../shared/data/pcam_ai4all_jpeg/train --size 96 --workers 2 --rounds 3

Prints one line per measurement and a last JSON line with the medians and their ratio. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def baseline(folder: str, size: int, workers: int, images: int = 5120) -> float:
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    dl = torch.utils.data.DataLoader(datasets.ImageFolder(folder, transform=tf), batch_size=64, shuffle=True,
                                     num_workers=workers, drop_last=True)
    it = iter(dl)
    next(it)
    n, t = 0, time.perf_counter()
    for x, _ in it:
        n += len(x)
        if n >= images:
            break
    return n / (time.perf_counter() - t)


def ours(pack: Path, size: int, workers: int) -> float:
    out = subprocess.run([sys.executable, "-m", "sdmae", "bench", "data", "--data", str(pack), "--set",
                          f"model.img_size={size}", f"data.num_workers={workers}"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="a class tree of JPEG tiles (ImageFolder layout)")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pack = Path(tmp) / "tiles.pack"
        subprocess.run([sys.executable, "-m", "sdmae", "data", "pack", a.folder, "--out", str(pack)],
                       check=True, capture_output=True)
        o, b = [], []
        for r in range(a.rounds):
            o.append(ours(pack, a.size, a.workers))
            b.append(baseline(a.folder, a.size, a.workers))
            print(f"round {r + 1}: packed + sdmae {o[-1]:.0f} img/s, PIL ImageFolder {b[-1]:.0f} img/s, "
                  f"{o[-1] / b[-1]:.2f}x", flush=True)
    mo, mb = statistics.median(o), statistics.median(b)
    print(json.dumps({"sdmae_packed_images_per_s": round(mo, 1), "pil_folder_images_per_s": round(mb, 1),
                      "ratio": round(mo / mb, 2), "rounds": a.rounds, "size": a.size, "workers": a.workers}))


if __name__ == "__main__":
    main()
