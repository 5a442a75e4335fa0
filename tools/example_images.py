"""Write the example images `cnncomp run` is shown on (examples/images/):

- digit_<label>.png: the first digit of the held-out split LeNet never saw in training
  (frontends/zoo/weights/digits_test.npz), as a 32x32 grayscale PNG;
- flower.jpg: scikit-learn's sample photo `flower.jpg` (CC BY 2.0, by vultilion on Flickr), scaled to 320x240.

    python tools/example_images.py          # needs Pillow and scikit-learn (the dev extra)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image

ROOT = Path(__file__).parents[1]
OUT = ROOT / "examples" / "images"
DIGITS = ROOT / "frontends" / "zoo" / "weights" / "digits_test.npz"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with np.load(DIGITS) as split:
        digit, label = split["x"][0, 0], int(split["y"][0])
    digit_path = OUT / f"digit_{label}.png"
    Image.fromarray(np.rint(digit * 255).astype(np.uint8), mode="L").save(digit_path)
    flower = Image.fromarray(load_sample_image("flower.jpg")).resize((320, 240), Image.Resampling.LANCZOS)
    flower.save(OUT / "flower.jpg", quality=85)
    print(f"wrote {digit_path} and {OUT / 'flower.jpg'}")


if __name__ == "__main__":
    main()
