"""Write the shipped held-out digits (frontends/zoo/weights/digits_test.npz) as PNG images, for trying
`cnncomp run --out` on a folder:

    python tools/digit_images.py digits/ [--count 2000]

Image k is digit k mod 360, 32 x 32 grayscale; `labels.csv` beside them gives each file's digit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS = Path(__file__).parents[1] / "frontends" / "zoo" / "weights" / "digits_test.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=360, help="images to write (default 360, the whole split)")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be positive")
    with np.load(DIGITS) as split:
        x, y = split["x"], split["y"]
    args.folder.mkdir(parents=True, exist_ok=True)
    width = len(str(args.count - 1))
    lines = ["file,digit"]
    for index in range(args.count):
        name = f"{index:0{width}d}.png"
        pixels = np.rint(x[index % len(x), 0] * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(args.folder / name)
        lines.append(f"{name},{y[index % len(y)]}")
    (args.folder / "labels.csv").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.count} digit images to {args.folder}")


if __name__ == "__main__":
    main()
