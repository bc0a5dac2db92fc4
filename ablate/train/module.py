"""One LightningModule for every variant and task.

Batches are (inputs, labels) with -100 where no loss is taken. Validation keeps, per validation
dataloader ("part": an MQAR test segment or a text split), the summed loss, the correct
predictions and the counted positions, and logs

    val/<part>/acc, val/<part>/loss,  val/acc (mean over parts),  val/loss, val/ppl (token-weighted)
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from ablate.config import ModelConfig, from_dict, to_dict
from ablate.layers import no_weight_decay
from ablate.model import LM
from ablate.ops.backends import Backends
from ablate.train.recipe import RecipeConfig, build_optimizer


def fsdp2():
    """-> (fully_shard, FSDPModule): public in torch.distributed.fsdp since torch 2.6."""
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError:  # torch 2.5
        from torch.distributed._composable.fsdp import FSDPModule, fully_shard
    return fully_shard, FSDPModule


class LitLM(L.LightningModule):
    """Arguments may be the configs or their plain dicts: the checkpoint keeps the dicts as its
    hyperparameters, so ``LitLM.load_from_checkpoint(path)`` rebuilds the module (with
    ``weights_only`` loading: no pickled classes in the checkpoint)."""

    def __init__(self, model_cfg: ModelConfig | dict, recipe: RecipeConfig | dict, max_steps: int,
                 val_names: list[str], backends: Backends | dict | None = None):
        super().__init__()
        if isinstance(model_cfg, dict):
            model_cfg = from_dict(ModelConfig, model_cfg, "checkpoint hyperparameters", "model_cfg.")
        if isinstance(recipe, dict):
            recipe = from_dict(RecipeConfig, recipe, "checkpoint hyperparameters", "recipe.")
        if isinstance(backends, dict):
            backends = Backends(**backends)
        self.save_hyperparameters({"model_cfg": to_dict(model_cfg), "recipe": to_dict(recipe), "max_steps": max_steps,
                                   "val_names": list(val_names), "backends": (backends or Backends()).as_dict()})
        self.model = LM(model_cfg, backends)
        self.recipe, self.max_steps, self.val_names = recipe, max_steps, val_names

    def configure_model(self):
        """Under recipe.strategy fsdp (Lightning's ModelParallelStrategy gives the module a device
        mesh): FSDP2 shards each block, then the root (embedding, tied head, meta tokens, final
        norm), so one block's weights are gathered at a time. Otherwise nothing to do."""
        mesh = self.device_mesh
        if mesh is None:
            return
        fully_shard, FSDPModule = fsdp2()
        if isinstance(self.model, FSDPModule):  # configure_model runs again for validate/test
            return
        # sharding replaces every parameter by a DTensor: the weight-decay tags move by name
        untagged = {name for name, p in self.model.named_parameters() if getattr(p, "_no_weight_decay", False)}
        for block in self.model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        for name, p in self.model.named_parameters():
            if name in untagged:
                no_weight_decay(p)

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        logits = self.model(inputs).logits
        world = self.trainer.world_size
        if world == 1:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        else:  # the global batch's mean over labelled tokens: DDP averages the ranks' gradients
            total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                    reduction="sum")
            count = self.trainer.strategy.reduce((labels != -100).sum().float(), reduce_op="sum")
            loss = total * world / count.clamp(min=1)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, sync_dist=world > 1)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_validation_epoch_start(self):
        self._val = torch.zeros(len(self.val_names), 3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        inputs, labels = batch
        logits = self.model(inputs).logits.float()
        mask = labels != -100
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        correct = ((logits.argmax(-1) == labels) & mask).sum()
        self._val[dataloader_idx] += torch.stack([loss.double(), correct.double(), mask.sum().double()])

    def on_validation_epoch_end(self):
        totals = self.trainer.strategy.reduce(self._val, reduce_op="sum")
        loss, correct, count = totals.unbind(-1)
        count = count.clamp(min=1)
        for i, name in enumerate(self.val_names):
            self.log(f"val/{name}/acc", correct[i] / count[i], sync_dist=False)
            self.log(f"val/{name}/loss", loss[i] / count[i], sync_dist=False)
        self.log("val/acc", (correct / count).mean())
        mean_loss = loss.sum() / count.sum()
        self.log("val/loss", mean_loss)
        self.log("val/ppl", torch.exp(mean_loss))

    def configure_optimizers(self):
        opt, sched = build_optimizer(self.model, self.recipe, self.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
