"""NC, Neural Cleanse (Wang et al., IEEE S&P 2019), as BackdoorBench's ``defense/nc.py`` runs it.

1. reverse-engineer, for every class t, the smallest trigger that sends clean images to t:
   a mask m (1 x H x W) and a pattern P (C x H x W), both through tanh, x' = (1 - m) x + m P,
   minimising CE(f(x'), t) + cost * |m|_1 with Adam (lr 0.1, betas 0.5 / 0.9); the cost
   starts at 1e-3 and is doubled (halved by 2^1.5) after ``patience`` epochs at or above (below)
   98% attack success; the smallest mask reaching 98% is kept;
2. the anomaly index of each class's |m|_1, |l1 - median| / (1.4826 MAD): classes below the
   median with an index above 2 are flagged as backdoor targets (reported as the detection);
3. if any is flagged, unlearn: fine-tune on the clean subset with 20% of it stamped with a
   flagged class's reversed trigger, labels kept (BackdoorBench's FT recipe). Otherwise the
   model is returned unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import Defense, DefenseContext, DefenseOutput, LabelledImages, TrainConfig
from defenses.shared import clean_finetuning

MAD_CONSISTENCY = 1.4826  # the MAD of a normal distribution, as a std


def anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """|x - median| / (1.4826 * median |x - median|) per class."""
    median = norms.median()
    mad = MAD_CONSISTENCY * (norms - median).abs().median()
    return (norms - median).abs() / mad.clamp_min(1e-12)


@dataclass
class Trigger:
    mask: torch.Tensor  # (1, H, W) in [0, 1]
    pattern: torch.Tensor  # (C, H, W) in [0, 1]
    success: float

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - self.mask) * x + self.mask * self.pattern


class NeuralCleanse(Defense):
    name = "nc"
    reference_name = "nc"  # BackdoorBench's table lists it
    needs = frozenset({"backdoored_model", "clean_subset"})

    @dataclass(frozen=True)
    class Params:
        nc_epochs: int = 80  # reverse-engineering epochs per class (BackdoorBench nc_epoch)
        batch_size: int = 256
        mask_lr: float = 0.1
        init_cost: float = 1e-3
        success_threshold: float = 0.98  # atk_succ_threshold
        patience: int = 5
        cost_multiplier: float = 2.0
        early_stop_patience: int = 25
        early_stop_threshold: float = 0.99
        anomaly_threshold: float = 2.0
        unlearning_ratio: float = 0.2
        epochs: int = 100  # unlearning: BackdoorBench's FT recipe
        lr: float = 0.01
        weight_decay: float = 5e-4

        def __post_init__(self) -> None:
            if min(self.nc_epochs, self.batch_size, self.patience, self.early_stop_patience) < 1:
                raise ValueError("nc_epochs, batch_size and the patiences must be >= 1")
            if self.epochs < 0 or min(self.mask_lr, self.init_cost, self.lr) <= 0:
                raise ValueError("epochs >= 0; mask_lr, init_cost and lr > 0")
            if not 0 < self.unlearning_ratio <= 1 or not 0 < self.success_threshold <= 1:
                raise ValueError("unlearning_ratio and success_threshold must be in (0, 1]")
            if self.cost_multiplier <= 1 or self.anomaly_threshold <= 0:
                raise ValueError("cost_multiplier must be > 1 and anomaly_threshold > 0")

    def cost_epochs(self, budget: TrainConfig, clean_fraction: float, n_train: int) -> float:
        p = self.params
        return clean_fraction * (10 * p.nc_epochs + p.epochs)

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        clean = ctx.clean_subset
        model = ctx.backdoored_model().to(ctx.device).eval()
        with ctx.stage("reverse"):
            triggers = [self.reverse(ctx, model, clean, t) for t in range(ctx.num_classes)]
        norms = torch.stack([t.mask.sum() for t in triggers]).cpu()
        index = anomaly_index(norms)
        flagged = [
            t
            for t in range(ctx.num_classes)
            if norms[t] < norms.median() and index[t] > p.anomaly_threshold
        ]
        ctx.log(f"nc: mask norms {norms.round().tolist()}; flagged {flagged}")
        metrics = {
            "flagged_classes": len(flagged),
            "flagged_class": flagged[0] if flagged else -1,
            "max_anomaly_index": float(torch.where(norms < norms.median(), index, 0.0).max()),
        }
        if flagged:
            with ctx.stage("unlearning"):
                stamped = self.stamped_subset(ctx, clean, [triggers[t] for t in flagged])
                config = clean_finetuning(p.epochs, p.lr, p.batch_size, p.weight_decay)
                ctx.fit(model, stamped.images, stamped.labels, config, stream="unlearning")
        return DefenseOutput(model=model, metrics=metrics)

    def reverse(
        self, ctx: DefenseContext, model: nn.Module, clean: LabelledImages, target: int
    ) -> Trigger:
        """NC's optimisation for one target class; the smallest mask that reached the success
        threshold (or the last one, if none did)."""
        p = self.params
        dev = ctx.device
        gen = ctx.rng(f"reverse/{target}")
        shape = clean.images.shape[1:]
        mask_param = torch.atanh((torch.rand((1, *shape[1:]), generator=gen) - 0.5) * 1.99)
        pattern_param = torch.atanh((torch.rand(shape, generator=gen) - 0.5) * 1.99)
        mask_param, pattern_param = (
            t.to(dev).requires_grad_(True) for t in (mask_param, pattern_param)
        )
        optimizer = torch.optim.Adam([mask_param, pattern_param], lr=p.mask_lr, betas=(0.5, 0.9))
        for q in model.parameters():
            q.requires_grad_(False)
        cost, up, down, set_counter = p.init_cost, 0, 0, 0
        best: Trigger | None = None
        last = Trigger(torch.zeros(1), torch.zeros(1), 0.0)
        best_norm, stale, early_best = float("inf"), 0, float("inf")
        went_up = went_down = False
        y_target = torch.full((p.batch_size,), target, device=dev)
        for _ in range(p.nc_epochs):
            order = torch.randperm(len(clean), generator=gen)
            hits = seen = 0
            for start in range(0, len(order), p.batch_size):
                idx = order[start : start + p.batch_size]
                x = clean.images[idx].to(dev).float() / 255
                mask = torch.tanh(mask_param) / 2 + 0.5
                pattern = torch.tanh(pattern_param) / 2 + 0.5
                logits = model((1 - mask) * x + mask * pattern)
                y = y_target[: len(idx)]
                loss = F.cross_entropy(logits, y) + cost * mask.abs().sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                hits += int(logits.argmax(1).eq(y).sum())
                seen += len(idx)
            success = hits / max(seen, 1)
            with torch.no_grad():
                last = Trigger(
                    torch.tanh(mask_param) / 2 + 0.5, torch.tanh(pattern_param) / 2 + 0.5, success
                )
            norm = float(last.mask.sum())
            if success >= p.success_threshold and norm < best_norm:
                best, best_norm = last, norm
            # the official early stop: the best norm stalled, after the cost went up and down
            if best_norm < float("inf"):
                stale = stale + 1 if best_norm >= p.early_stop_threshold * early_best else 0
            early_best = min(best_norm, early_best)
            if went_up and went_down and stale >= p.early_stop_patience:
                break
            # the cost schedule
            if cost == 0 and success >= p.success_threshold:
                set_counter += 1
                if set_counter >= p.patience:
                    cost, up, down = p.init_cost, 0, 0
            elif cost > 0:
                up, down = (up + 1, 0) if success >= p.success_threshold else (0, down + 1)
                if up >= p.patience:
                    cost, up, went_up = cost * p.cost_multiplier, 0, True
                elif down >= p.patience:
                    cost, down, went_down = cost / p.cost_multiplier**1.5, 0, True
        for q in model.parameters():
            q.requires_grad_(True)
        chosen = best or last
        return Trigger(chosen.mask.detach(), chosen.pattern.detach(), chosen.success)

    def stamped_subset(
        self, ctx: DefenseContext, clean: LabelledImages, triggers: list[Trigger]
    ) -> LabelledImages:
        """The clean subset with ``unlearning_ratio`` of it stamped (triggers in turn), labels
        kept: the model learns that the reversed triggers mean nothing."""
        gen = ctx.rng("unlearning_subset")
        n = len(clean)
        chosen = torch.randperm(n, generator=gen)[: int(n * self.params.unlearning_ratio)]
        images = clean.images.clone()
        for i, index in enumerate(chosen.tolist()):
            trigger = triggers[i % len(triggers)]
            x = images[index].float().div(255).to(trigger.mask.device)
            images[index] = trigger.stamp(x).mul(255).round().clamp(0, 255).to(torch.uint8).cpu()
        return LabelledImages(images, clean.labels)
