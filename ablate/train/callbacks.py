"""The run's callbacks: measured training throughput, a progress bar over the run's steps, and
the checkpoint written at every evaluation."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar


class Throughput(L.Callback):
    """Training tokens per second, timed from the end of the first `skip` steps (compilation,
    warm-up) to the end of training, with validation left out. The GPU is synchronised only
    where the clock starts, pauses and stops, not at every step, so timing does not slow the
    training it measures."""

    def __init__(self, skip: int = 3):
        self.skip, self.seen, self.tokens, self.seconds = skip, 0, 0, 0.0
        self.started: float | None = None

    def _start(self, module) -> None:
        self._sync(module)
        self.started = time.perf_counter()

    def _stop(self, module) -> None:
        if self.started is not None:
            self._sync(module)
            self.seconds += time.perf_counter() - self.started
            self.started = None

    @staticmethod
    def _sync(module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen == self.skip:
            self._start(module)
        elif self.seen > self.skip:
            self.tokens += batch[0].numel() * trainer.world_size

    def on_validation_start(self, trainer, module):
        self._stop(module)

    def on_validation_end(self, trainer, module):
        if self.seen >= self.skip and not trainer.sanity_checking:
            self._start(module)

    def on_train_end(self, trainer, module):
        self._stop(module)

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.tokens and self.seconds else None


class StepProgressBar(TQDMProgressBar):
    """A progress bar over the run's optimizer steps. Lightning's epochs are this recipe's evaluation
    intervals (checkpoint and validation points), so its per-epoch bar would restart at every
    evaluation and its ETA would be the interval's; this bar counts global steps to max_steps, from
    where a resumed run starts, with the current metrics as its postfix."""

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.initial = bar.n = trainer.global_step  # a resumed run: the ETA counts only what is left
        bar.set_description("train")

    def on_train_epoch_start(self, trainer, *_) -> None:
        pass  # one bar for the whole run

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's attempt folder, not a metric
        return items


class EvalCheckpoint(L.Callback):
    """``last.ckpt`` after every evaluation: the resume point of a killed run.

    Lightning's ModelCheckpoint with ``save_last=True, save_top_k=0`` writes ``last.ckpt`` only
    when training ends, so a run killed before then restarted at step 0. Here the checkpoint is
    written at the end of each validation (an evaluation interval is a Lightning epoch, where the
    deterministic batch order restarts cleanly), to a temporary file first and then renamed, so a
    crash or a full disk never leaves a truncated ``last.ckpt`` behind."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        trainer.save_checkpoint(tmp, weights_only=False)  # the full state (optimizer, loops); rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


class StopCheck(L.Callback):
    """Asks ``should_stop(step, metrics)`` after every evaluation (after the checkpoint is written,
    so a stopped run keeps it) and stops training when it says so; ``stopped_at`` is then the step.
    A search study's pruner decides through it (``ablate.sweep.search``); the run records its
    metrics so far with status "pruned"."""

    def __init__(self, should_stop):
        self.should_stop, self.stopped_at = should_stop, None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if self.should_stop(trainer.global_step, metrics):
            self.stopped_at = trainer.global_step
            trainer.should_stop = True
