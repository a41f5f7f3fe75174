"""The "blur kernel space" network (bkse ``KernelWizard``, Tran et al., CVPR 2021), written from its description.

It maps a sharp image x and a blur latent z to a blurred image: B(x, z) = x + T(U(E(x), z)), with

* E, ``feature_extractor``: conv3×3 → LReLU(0.1) → 2 × [stride-2 conv3×3 → LReLU(0.1)] → ``front_RBs``
  residual blocks t + conv(ReLU(conv(t))); (B, nf, H/4, W/4).
* U, ``adapter``: a 5-level pix2pix U-Net without norms (4×4 stride-2 convs down, 4×4 transposed convs up,
  no biases except the outermost); at the innermost level (B, 8nf, H/128, W/128) the features are
  concatenated with the latent z (features first), so z must be (B, 8nf, H/128, W/128). The outermost up
  path ends in Tanh; inner levels return cat([up, input]).
* T, ``recon_trunk``: ``back_RBs`` residual blocks → conv nf→4nf, PixelShuffle 2, LReLU(0.1) → conv nf→256,
  PixelShuffle 2, LReLU(0.1) → conv 64→64, LReLU(0.1) → conv 64→3.

The ``kernel_extractor`` (only used to *encode* a sharp/blurred pair into z) is kept so the public checkpoint
loads strictly; :meth:`KernelWizard.extract_kernel` runs it. Module names and Sequential indices follow the
checkpoint's state-dict keys (parameter-free norm slots are ``nn.Identity``).
"""
from __future__ import annotations

import torch
from torch import nn


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1)


class ResidualBlock(nn.Module):
    """t + conv2(ReLU(conv1(t))), 3×3 convs with bias."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv3(nf, nf), _conv3(nf, nf)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.conv2(torch.relu(self.conv1(t)))


class ReflectResnetBlock(nn.Module):
    """t + [pad₁ → conv3×3 → ReLU → pad₁ → conv3×3](t), reflect padding, no biases (kernel extractor)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.Identity(), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.Identity())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.conv_block(t)


class UNetLevel(nn.Module):
    """One adapter level: ``down`` → inner level (or latent concatenation) → ``up``; skip cat unless outermost."""

    def __init__(self, outer: int, inner: int, submodule: "UNetLevel | None", outermost: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(outer, inner, 4, 2, 1, bias=False)
        up = nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1, bias=outermost)
        # registration order down → submodule → up gives the checkpoint's key order
        self.down = nn.Sequential(down) if outermost else nn.Sequential(nn.LeakyReLU(0.2), down, nn.Identity())
        self.submodule = submodule
        self.up = nn.Sequential(nn.ReLU(), up, nn.Tanh() if outermost else nn.Identity())

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        h = torch.cat([h, z], dim=1) if self.submodule is None else self.submodule(h, z)
        h = self.up(h)
        return h if self.outermost else torch.cat([h, x], dim=1)


class Adapter(nn.Module):
    """The kernel-conditioned 5-level U-Net U(features, z)."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        level = UNetLevel(8 * nf, 8 * nf, None)
        for outer, inner in ((4 * nf, 8 * nf), (2 * nf, 4 * nf), (nf, 2 * nf)):
            level = UNetLevel(outer, inner, level)
        self.model = UNetLevel(nf, nf, level, outermost=True)

    def forward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.model(features, z)


class KernelWizard(nn.Module):
    """bkse KernelWizard (``use_vae`` layout, norm none): B(x, z) = x + T(U(E(x), z)).

    Defaults are the public GOPRO_wVAE.pth configuration (115,265,475 parameters).
    """

    def __init__(self, input_nc: int = 3, nf: int = 64, front_RBs: int = 10, back_RBs: int = 20,
                 kernel_dim: int = 512, extractor_blocks: int = 4) -> None:
        super().__init__()
        self.nf, self.kernel_dim = nf, kernel_dim
        lrelu = nn.LeakyReLU(0.1)
        self.feature_extractor = nn.Sequential(
            _conv3(input_nc, nf), lrelu, _conv3(nf, nf, 2), lrelu, _conv3(nf, nf, 2), lrelu,
            *[ResidualBlock(nf) for _ in range(front_RBs)])
        self.kernel_extractor = nn.Module()
        self.kernel_extractor.model = self._kernel_extractor(nf, kernel_dim, extractor_blocks)
        self.adapter = Adapter(nf)
        self.recon_trunk = nn.Sequential(
            *[ResidualBlock(nf) for _ in range(back_RBs)],
            _conv3(nf, 4 * nf), nn.PixelShuffle(2), lrelu,
            _conv3(nf, 256), nn.PixelShuffle(2), lrelu,
            _conv3(64, 64), lrelu, _conv3(64, input_nc))

    @staticmethod
    def _kernel_extractor(nf: int, kernel_dim: int, n_blocks: int) -> nn.Sequential:
        """reflect-pad 3 → conv7×7 2nf→nf → ReLU → 5 × [stride-2 conv3×3 → ReLU] → n_blocks resnet blocks."""
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(2 * nf, nf, 7, bias=False),
                                   nn.Identity(), nn.ReLU()]
        channels = nf
        for _ in range(5):
            out = min(2 * channels, 2 * kernel_dim)
            layers += [nn.Conv2d(channels, out, 3, 2, 1, bias=False), nn.Identity(), nn.ReLU()]
            channels = out
        layers += [ReflectResnetBlock(channels) for _ in range(n_blocks)]
        return nn.Sequential(*layers)

    def adapt_kernel(self, sharp: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """B(x, z) = x + T(U(E(x), z)) for a [0, 1] image x (H, W multiples of 128) and z (B, 8nf, H/128, W/128)."""
        return sharp + self.recon_trunk(self.adapter(self.feature_extractor(sharp), z))

    def extract_kernel(self, sharp: torch.Tensor, blurred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel encoder on a (sharp, blurred) pair: its output split into two ``kernel_dim`` halves."""
        features = torch.cat([self.feature_extractor(sharp), self.feature_extractor(blurred)], dim=1)
        code = self.kernel_extractor.model(features)
        return code[:, :self.kernel_dim], code[:, self.kernel_dim:]
