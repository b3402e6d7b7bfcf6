"""The fit-start component check, run by ``lightning-curate`` before the run writes anything.

Lightning's ``fit`` creates the logger (which deletes an earlier ``metrics.csv``) and saves
``config.yaml`` before any callback's ``setup``, where :class:`~lightning_curate.loop.RetrainingLoop`
checks the generator, the reward and the data source. A component that fails that check would then
refuse a resume after it had already rewritten both files. The CLI runs the check here instead,
right after building the classes: the module's and the data module's ``prepare_data`` first (a reward
classifier or a judge may have to be trained before anything can be scored; both skip work already
done, so Lightning's own call after is cheap), then
:func:`~lightning_curate.loop.component_check.check_components` on the trainer's device.
"""

from __future__ import annotations

from typing import Any

from lightning_curate.loop.component_check import check_run_components

__all__ = ["check_components_first", "forks_later"]


def check_components_first(trainer: Any, pl_module: Any, datamodule: Any) -> None:
    """Prepare and check a ``CurationModule``'s components and a ``BlendingDataModule``'s source on the
    trainer's root device, before ``Trainer.fit`` (one process: rank 0 of a run)."""
    pl_module.prepare_data()
    datamodule.prepare_data()
    check_run_components(pl_module, datamodule, device=trainer.strategy.root_device)


def forks_later(trainer: Any) -> bool:
    """Whether ``fit`` forks its processes (``ddp_fork``, ``ddp_notebook``): then CUDA must not be touched
    before it, and the check and the GPU's free memory are left to each process's ``setup``."""
    launcher = getattr(trainer.strategy, "launcher", None)
    return bool(launcher is not None and getattr(launcher, "_start_method", None) == "fork")
