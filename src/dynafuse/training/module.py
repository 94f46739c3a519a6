"""The LightningModule every model trains in: task loss + the model's declared terms, valid metrics."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from .. import losses
from ..config import TrainConfig
from ..data.corrupt import modality_dropout
from ..errors import DynafuseError
from ..metrics import CLASS_KEYS, lower_is_better, score_metrics
from ..models import MSAModel
from ..models.blocks import is_lora_weight


class LitMSA(L.LightningModule):
    """Any registered model inside Lightning: the task loss plus the model's declared `loss_terms()`, valid
    metrics of the whole suite, the optimiser of `train` (AdamW, a lower backbone learning rate, warm-up).

    No hyper-parameters are saved into checkpoints: the run folder's config.yaml is the config, and a checkpoint
    then holds tensors and plain values only, so it loads with `weights_only=True` (no code runs)."""

    def __init__(self, model: MSAModel, train_cfg: TrainConfig, value_range: float):
        super().__init__()
        self.model = model
        self.train_cfg, self.value_range = train_cfg, value_range
        self.modality_dropout = float(train_cfg.modality_dropout)
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, batch):
        return self.model(batch)

    def compute_loss(self, out, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        kind, task = self.train_cfg.loss, self.model.task
        parts = {"task": losses.task_loss(out.logits, batch.y, task, kind)}
        total = self.model.task_weight(self.model.stage) * parts["task"]
        for name, (weight, term) in self.model.loss_terms().items():
            if weight:
                parts[name] = term(out, batch, task=task, kind=kind)
                total = total + weight * parts[name]
        return total, parts

    def on_train_epoch_start(self):
        # Training progress in [0, 1), for schedules inside models (e.g. CrossSent's cosine ramp-up).
        self.model.progress = self.current_epoch / max(1, self.trainer.max_epochs or 1)

    def augment(self, batch):
        """Modality dropout (train.modality_dropout=P): in training only, never in validation or test."""
        p = self.modality_dropout
        return modality_dropout(batch, p, self.model.modalities) if p and self.training else batch

    def training_step(self, batch, _):
        batch = self.augment(batch)
        loss, parts = self.compute_loss(self(batch), batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch))
        for k, v in parts.items():
            self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch, _):
        out = self(batch)
        self._val.append((batch.index, out.pred.detach().float(), batch.y))

    def on_validation_epoch_end(self):
        idx, pred, y = (torch.cat(t) for t in zip(*self._val))
        self._val.clear()
        if self.trainer.world_size > 1:  # every rank saw part of valid: gather, drop sampler padding duplicates
            idx, pred, y = (self.all_gather(t).flatten() for t in (idx, pred, y))
        keep = np.unique(idx.cpu().numpy(), return_index=True)[1]
        if not torch.isfinite(pred).all():  # diverged: say so in one line, not as a metric's ValueError
            raise DynafuseError(f"training diverged: NaN/Inf predictions on valid after epoch {self.current_epoch} "
                                f"(train.lr={self.train_cfg.lr}); lower train.lr or set train.grad_clip")
        m = score_metrics(pred.cpu().numpy()[keep], y.cpu().numpy()[keep], self.model.task, self.value_range)
        self.log_dict({f"valid/{k}": float(v) for k, v in m.items() if k != "n"}, prog_bar=False)
        self.log("valid_score", float(m[self.monitor_key()]), prog_bar=True)

    def monitor_key(self) -> str:
        key = self.train_cfg.monitor
        if key == "auto" or (self.model.task == "3class" and key not in CLASS_KEYS):
            key = "mae" if self.model.task == "regression" else "acc3"
        return key

    def monitor_mode(self) -> str:
        return "min" if lower_is_better(self.monitor_key()) else "max"

    def configure_optimizers(self):
        cfg = self.train_cfg
        # pretrained backbone weights at backbone_lr; new weights (LoRA adapters included) at lr
        pretrained = {n for n, _ in self.model.named_parameters() if n.startswith("text_backbone.")
                      and not is_lora_weight(n)}
        backbone = [p for n, p in self.model.named_parameters() if n in pretrained and p.requires_grad]
        rest = [p for n, p in self.model.named_parameters() if n not in pretrained and p.requires_grad]
        groups = [{"params": rest, "lr": cfg.lr}]
        if backbone:
            groups.append({"params": backbone, "lr": cfg.backbone_lr})
        optimizer = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        opt = optimizer(groups, weight_decay=cfg.weight_decay)
        warmup = cfg.warmup_ratio
        if not warmup:
            return opt
        # linear warm-up then linear decay, per step (CrossSent / BERT-style fine-tuning)
        total = max(self.trainer.estimated_stepping_batches, 1)
        steps = max(int(warmup * total), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / steps, max(0.0, (total - s) / max(total - steps, 1))))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
