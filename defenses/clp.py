"""CLP, Channel Lipschitzness-based Pruning (Zheng et al., ECCV 2022), as the official code and
BackdoorBench's ``defense/clp.py`` run it. Data-free: it needs only the backdoored model.

A backdoor channel reacts strongly to a small trigger, so its upper bound on the channel's
Lipschitz constant (UCLC) stands out. For every BatchNorm layer, paired with the convolution
before it in module order (the official rule; a pre-activation block's BN thus pairs with the
previous block's last convolution), channel k's UCLC is the largest singular value of the
convolution's kernel k, reshaped to (in, kh * kw), scaled by |gamma_k / sigma_k|. Channels whose
UCLC exceeds the layer's mean + u std are pruned: their BN weight and bias set to zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.api import Defense, DefenseContext, DefenseOutput, TrainConfig


def channel_lipschitz(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """(C,) UCLC of each output channel of ``conv`` followed by ``bn``."""
    weight = conv.weight.detach().float()
    kernels = weight.reshape(weight.shape[0], weight.shape[1], -1)
    scale = (bn.weight.detach().float() / bn.running_var.float().sqrt()).abs()  # official: no eps
    return torch.linalg.matrix_norm(kernels, ord=2) * scale


class CLP(Defense):
    name = "clp"
    reference_name = "clp"  # BackdoorBench's table lists it
    needs = frozenset({"backdoored_model"})

    @dataclass(frozen=True)
    class Params:
        u: float = 3.0  # official and BackdoorBench default

        def __post_init__(self) -> None:
            if self.u < 0:
                raise ValueError(f"u must be >= 0, got {self.u}")

    def cost_epochs(self, budget: TrainConfig, clean_fraction: float, n_train: int) -> float:
        return 0.0  # a pass over the weights

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        model = ctx.backdoored_model()
        with ctx.stage("pruning"):
            pruned = self.prune(model)
        ctx.log(f"clp: pruned {pruned} channels (u = {self.params.u})")
        return DefenseOutput(model=model, metrics={"pruned_channels": pruned})

    def prune(self, model: nn.Module) -> int:
        """Zero the BN weight and bias of every channel above its layer's bound, in place;
        returns how many were pruned."""
        conv: nn.Conv2d | None = None
        pruned = 0
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Conv2d):
                    conv = module
                elif isinstance(module, nn.BatchNorm2d) and conv is not None:
                    if conv.out_channels != module.num_features:
                        continue  # no convolution of this width precedes it
                    lips = channel_lipschitz(conv, module)
                    chosen = lips > lips.mean() + self.params.u * lips.std()
                    module.weight[chosen] = 0
                    module.bias[chosen] = 0
                    pruned += int(chosen.sum())
        return pruned
