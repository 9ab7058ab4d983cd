"""benchmarks/pcam_colour_split.py: val holds whole colour groups of each class, fit and val do not overlap."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pcam_colour_split.py"
SHADES = [(200, 80, 160), (120, 40, 140), (240, 180, 200), (90, 90, 200)]  # four "stains"


def test_colour_split_holds_out_whole_colour_groups(tmp_path):
    rng = np.random.default_rng(0)
    shade_of = {}
    for cls in ("0", "1"):
        (tmp_path / "tiles" / cls).mkdir(parents=True)
        for i in range(40):
            shade = i % 4
            px = np.clip(np.array(SHADES[shade]) + rng.normal(0, 4, (16, 16, 3)), 0, 255).astype(np.uint8)
            f = tmp_path / "tiles" / cls / f"t{i:03d}.png"
            Image.fromarray(px).save(f)
            shade_of[str(f.resolve())] = (cls, shade)
    out = tmp_path / "split.csv"
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "tiles"), str(out), "--clusters", "4",
                    "--val-per-class", "10"], check=True, capture_output=True)
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 80 and {r["path"] for r in rows} == set(shade_of)
    for cls in ("0", "1"):
        val = {shade_of[r["path"]][1] for r in rows if r["label"] == cls and r["split"] == "val"}
        fit = {shade_of[r["path"]][1] for r in rows if r["label"] == cls and r["split"] == "fit"}
        assert len(val) == 1 and len(fit) == 3 and not val & fit  # one whole shade held out, none split
