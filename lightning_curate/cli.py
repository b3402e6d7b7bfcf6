"""The console script ``lightning-curate``: a LightningCLI over any module and DataModule.

``lightning-curate fit -c configs/mog8.yaml`` runs a whole curated-retraining
experiment; ``--ckpt_path last`` resumes it. Configs name their classes by
``class_path`` (your own module, generator, reward or data source work the
same way) and may use omegaconf interpolation (``${trainer.default_root_dir}``).
"""

from __future__ import annotations

from typing import Optional

import lightning as L
from lightning.pytorch.cli import LightningCLI


class CurateCLI(LightningCLI):
    """``LightningCLI`` with omegaconf interpolation and the config saved in the run directory."""


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of ``lightning-curate`` and ``python -m lightning_curate``; tests call it with ``args``.

    Returns nothing, so the console script exits with status 0 on success.
    """
    CurateCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        # "omegaconf+": interpolation is resolved on the final config, so a
        # command-line --trainer.default_root_dir moves the logger and checkpoints too.
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":  # pragma: no cover
    main()
