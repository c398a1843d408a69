"""Teachers of the GPU check, defined here (no torchvision, nothing to download).

`resnet50()`: the ResNet-50 layout (bottleneck blocks 3-4-6-3, widths 64-2048, 25.6M parameters
at 1,000 classes) taking uint8 images (B, 3, H, W) and normalising them on the device.
`gpt()`: a GPT-2-small-sized decoder (12 layers, d 768, 12 heads, vocab 50,257, context 1,024:
124M parameters with tied embeddings) taking token ids (B, L) of any integer dtype and
returning logits (B, L, vocab). `tiny=True` gives the same code at a few thousand parameters
for the CPU dry run. Weights are random (seeded by the caller): speed does not depend on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride), 1x1 expand (x4), batch norm, residual."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    """uint8 images (B, 3, H, W) -> logits (B, classes)."""

    def __init__(self, blocks: tuple[int, ...], base: int, classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)
        layers: list[nn.Module] = [nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base),
                                   nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        cin = base
        for stage, n in enumerate(blocks):
            width = base * 2 ** stage
            for i in range(n):
                layers.append(Bottleneck(cin, width, 2 if i == 0 and stage > 0 else 1))
                cin = width * 4
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std  # (B, 3, H, W)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def resnet50(classes: int = 1000, *, tiny: bool = False) -> ResNet:
    """ResNet-50's layout (25.6M parameters at 1,000 classes); tiny: one block a stage, base 4."""
    return ResNet((1, 1, 1, 1), 4, classes) if tiny else ResNet((3, 4, 6, 3), 64, classes)


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention (scaled_dot_product_attention) + MLP."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)  # (B, h, L, d/h)
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token ids (B, L) -> logits (B, L, vocab); the output layer shares the embedding."""

    def __init__(self, vocab: int, context: int, d: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.Sequential(*(Block(d, heads) for _ in range(layers)))
        self.ln = nn.LayerNorm(d)
        for p in self.parameters():  # GPT-2's init scale keeps random logits in fp16 range
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        return self.ln(self.blocks(x)) @ self.tok.weight.T  # (B, L, vocab)


def gpt(*, tiny: bool = False) -> GPT:
    """GPT-2 small's size (124M parameters); tiny: vocab 512, d 32, 2 layers."""
    return GPT(512, 64, 32, 2, 2) if tiny else GPT(50257, 1024, 768, 12, 12)


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
