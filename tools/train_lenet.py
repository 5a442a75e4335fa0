"""Train the zoo's LeNet-5 on the handwritten digits scikit-learn bundles, and ship the weights and the held-out split.

    python tools/train_lenet.py            # writes frontends/zoo/weights/lenet5_digits.npz and digits_test.npz

The 1,797 digits are 8x8 images with values 0-16; each is scaled to [0, 1] and upscaled to LeNet's 32x32 by
repeating every pixel 4x4 (white strokes on black, as scikit-learn stores them). A stratified fifth (360 digits)
is held out and never trained on. Everything is seeded and runs on one thread, so the script reproduces the
shipped arrays exactly on the same PyTorch version (held-out top-1 error 2.50%, 9 of 360, with PyTorch 2.13).

The PyTorch module's parameter names are the zoo graph's node names (`c1.weight`, ..., `logits.bias`), so the
state dict is the weights file `cnncomp ... --weights` reads. Needs the `dev` extra (torch, scikit-learn).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

WEIGHTS_DIR = Path(__file__).parents[1] / "frontends" / "zoo" / "weights"
SEED = 0
UPSCALE = 4  # 8x8 -> 32x32
EPOCHS = 40
BATCH = 32
LEARNING_RATE = 1e-3


class LeNet5(nn.Module):
    """The zoo's lenet5.cnn in PyTorch: valid 5x5 convolutions, tanh, 2x2 average pooling, two dense layers."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.logits = nn.Linear(84, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(torch.tanh(self.c1(x)), 2)
        x = F.avg_pool2d(torch.tanh(self.c3(x)), 2)
        x = torch.tanh(self.c5(x)).flatten(1)
        return self.logits(torch.tanh(self.f6(x)))


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): x as N x 1 x 32 x 32 float32 in [0, 1], y as int64 labels."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    images = images.repeat(UPSCALE, axis=1).repeat(UPSCALE, axis=2)[:, None]
    labels = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.2, random_state=SEED,
                                                        stratify=labels)
    return x_train, y_train, x_test, y_test


def train(x: np.ndarray, y: np.ndarray) -> LeNet5:
    torch.manual_seed(SEED)
    model = LeNet5()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    order = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        permutation = torch.randperm(len(inputs), generator=order)
        total = 0.0
        for start in range(0, len(inputs), BATCH):
            batch = permutation[start: start + BATCH]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1:3d}: loss {total / len(inputs):.4f}")
    return model.eval()


def top1_errors(model: LeNet5, x: np.ndarray, y: np.ndarray) -> int:
    with torch.inference_mode():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return int((predicted != y).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help=f"folder to write to (default {WEIGHTS_DIR})")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, x_test, y_test = digits()
    model = train(x_train, y_train)
    errors = top1_errors(model, x_test, y_test)
    print(f"train top-1 error {top1_errors(model, x_train, y_train) / len(y_train):.2%}; "
          f"held-out top-1 error {errors / len(y_test):.2%} ({errors} of {len(y_test)})")
    args.out.mkdir(parents=True, exist_ok=True)
    weights = {name: value.detach().numpy().astype(np.float32) for name, value in model.state_dict().items()}
    np.savez(args.out / "lenet5_digits.npz", **weights)
    np.savez_compressed(args.out / "digits_test.npz", x=x_test, y=y_test)
    print(f"wrote {args.out / 'lenet5_digits.npz'} and {args.out / 'digits_test.npz'}")


if __name__ == "__main__":
    main()
