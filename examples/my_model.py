"""Prune your own model: point `--arch` at a `module:function` that returns an nn.Module.

    chanprune check --arch examples.my_model:make --input-shape 1,3,32,32

The function may take `num_classes` (and `in_channels`); chanprune passes what it accepts.
"""
import torch
from torch import nn


class TwoBranch(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(32, 48, 3, padding=1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(64, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.mix(torch.cat([self.left(x), self.right(x)], 1)))
        return self.head(x.mean((2, 3)))


def make(num_classes: int = 10) -> nn.Module:
    return TwoBranch(num_classes)
