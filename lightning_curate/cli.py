"""The console script ``lightning-curate``: a LightningCLI over any module and DataModule.

``lightning-curate fit -c configs/mog8.yaml`` runs a whole curated-retraining
experiment; ``--ckpt_path last`` resumes it. Configs name their classes by
``class_path`` (your own module, generator, reward or data source work the
same way) and may use omegaconf interpolation (``${trainer.default_root_dir}``).
"""

from __future__ import annotations

from typing import Optional

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI


class CurateCLI(LightningCLI):
    """``LightningCLI`` with omegaconf interpolation and the config saved in the run directory."""

    def add_arguments_to_parser(self, parser) -> None:
        # Small models on a few shared CPU cores run several times faster on one thread.
        parser.add_argument("--torch_num_threads", type=Optional[int], default=None,
                            help="torch.set_num_threads for this run (default: torch's own choice)")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        threads = config.get("torch_num_threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"torch_num_threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)


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
