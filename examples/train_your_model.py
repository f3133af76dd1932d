"""Train a network of your own on a distilled set and measure it on the real test set.

    python examples/train_your_model.py [SET.safetensors]     # default: the shipped digits set

The set's labels are centred soft labels (one-hot minus 1/K, then learned): train on them
with a mean-squared error, as the paper does. ``ds.dataset()`` already holds the mirrored
copies when the set was distilled with the flip trick, and ``ds.test_set()`` preprocesses
the real test images exactly as the set's images were (standardisation, and ZCA for RGB).
"""

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

import rcig

path = sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent / "distilled" / "digits_ipc1.safetensors"
ds = rcig.load(path)
print(ds)
train, test = ds.dataset(), ds.test_set()

torch.manual_seed(0)
channels, size, _ = ds.images.shape[1:]
model = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, 256), nn.ReLU(), nn.Linear(256, ds.labels.shape[1]))
optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(300):
    for images, labels in DataLoader(train, batch_size=256, shuffle=True):
        loss = nn.functional.mse_loss(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

model.eval()
with torch.no_grad():
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in DataLoader(test, batch_size=1024))
print(f"test accuracy of my MLP trained on {len(train)} images: {100 * correct / len(test):.2f}%")
