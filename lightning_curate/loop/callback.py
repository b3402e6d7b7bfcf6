"""The retraining loop: rounds of curated self-consuming retraining inside one ``Trainer.fit``.

A round is a block of epochs. Round 0 (``initial_epochs`` epochs) trains on
real data only; every later round (``epochs_per_round`` epochs) trains on the
blend the DataModule builds. One round happens here, in
:meth:`RetrainingLoop.on_train_epoch_end` at a round's last epoch:

1. the module samples and curates (``CurationModule.curate_round``);
2. rank 0 adds the analysis and prediction columns to the round's row
   (:class:`~lightning_curate.loop.analysis.RoundAnalysis`);
3. the round store writes the winners and a manifest (atomic, checksummed);
4. the round's row goes to ``rounds.csv``, the logger, and the plots
   (:class:`~lightning_curate.loop.writing.RunWriter`).

The round and epoch arithmetic is :class:`~lightning_curate.loop.schedule.RoundSchedule`'s.

Lightning reloads the train dataloader at the next round's first epoch,
before ``on_train_epoch_start``, so the data for round ``t + 1`` is curated at
the end of round ``t``. Every draw is seeded from (seed, round) or (seed, epoch), so a
run resumed from any checkpoint repeats exactly what the uninterrupted run does.

Before anything is written the run directory is locked (:mod:`lightning_curate.store.lock`) and checked: a fresh
run never starts over stored rounds, a resume keeps the stored rounds' science settings unless a change is allowed
(:mod:`lightning_curate.store.settings`), and a few samples are drawn and scored (:mod:`.component_check`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_curate.loop.analysis import RoundAnalysis
from lightning_curate.loop.checkpoint import unresumable_reason
from lightning_curate.loop.component_check import check_run_components
from lightning_curate.loop.divergence import DivergenceWatch
from lightning_curate.loop.manifest import recipe_settings, round_manifest, science_settings
from lightning_curate.loop.report import fidelity_advice
from lightning_curate.loop.schedule import RoundSchedule, epoch_finished
from lightning_curate.loop.sizing import check_run_capacity
from lightning_curate.loop.startup import forks_later
from lightning_curate.loop.writing import RunWriter
from lightning_curate.ops.kchoice import triton_unavailable_reason
from lightning_curate.store.lock import RunLock, held_lock_for
from lightning_curate.store.preflight import check_resume, checkpoint_dirs, folders_outside
from lightning_curate.store.rounds import RoundStore, StoreError
from lightning_curate.store.settings import fingerprint, parse_allowed
from lightning_curate.utils.columns import Col
from lightning_curate.utils.seeding import derive_seed, seed_all
from lightning_curate.utils.validation import check_choice, check_float

__all__ = ["INITS", "RetrainingLoop", "apply_optimizer_settings"]

INITS = ("warm", "scratch")


class RetrainingLoop(RoundSchedule, Callback):
    """Drives the rounds; the trainer's ``max_epochs`` follows from them.

    Args:
        rounds: curated retraining rounds after round 0 (0: train ``p_0`` only).
        epochs_per_round: training epochs of each curated round.
        initial_epochs: epochs of round 0 on real data (default: ``epochs_per_round``).
        seed: run seed; every round's draws are derived from it.
        plots: write PNG figures after the rounds (mid-run only while drawing stays within 5% of the
            run; always at the end).
        allow_changed_settings: science settings (e.g. ``["beta"]`` or ``"beta,num_candidates"``) a
            resume may change deliberately; the change is recorded in the next round's manifest.
            Any other difference from the stored rounds refuses the resume.
        fidelity_threshold: warn at the end of the run when the aggregate learner fidelity
            (``reward_fidelity`` averaged over the rounds where it is meaningful) is below it.
        init: how each curated round starts training: ``warm`` fine-tunes the previous round's
            model (the default), ``scratch`` restarts from the initial weights with a fresh
            optimizer state, so round ``t + 1``'s model depends on round ``t``'s data only.
        learner_noise: the learner's refit jitter as a multiple of a round mean's sampling
            standard error (measure it with ``lightning-curate diagnose jitter``): a round's fidelity is
            reported only where its predicted move stands above this noise and the sampling
            noise. 0 (the default) counts sampling only.
    """

    def __init__(self, rounds: int = 10, epochs_per_round: int = 1, initial_epochs: Optional[int] = None,
                 seed: int = 0, plots: bool = True, allow_changed_settings: Optional[list[str] | str] = None,
                 fidelity_threshold: float = 0.85, init: str = "warm", learner_noise: float = 0.0):
        super().__init__(rounds, epochs_per_round, initial_epochs)
        self.seed = seed
        self.allow_changed_settings = parse_allowed(allow_changed_settings)
        self.fidelity_threshold = check_float("fidelity_threshold", fidelity_threshold, minimum=0.0)
        self.init = check_choice("init", init, INITS)
        self.learner_noise = check_float("learner_noise", learner_noise, minimum=0.0)
        self.writer = RunWriter(plots)  # the rows, rounds.csv, the loggers, the figures, the summary
        self.analysis = RoundAnalysis(self.learner_noise, rounds=self.rounds)  # predictions, fidelity columns
        self._initial_state: Optional[dict[str, Any]] = None  # the generator's weights before any training
        self.reward_config: Optional[dict[str, Any]] = None  # the reward's class_path/init_args, from the CLI
        self.settings: Optional[dict[str, Any]] = None
        self.settings_changed: dict[str, list] = {}
        self.run_id: Optional[str] = None  # created at the run's first start; every manifest and checkpoint records it
        self._loaded_identity: Optional[dict[str, Any]] = None  # the restored checkpoint's run identity
        self.checked_dir: Optional[Path] = None  # set once check_run_dir passed for this directory
        self.components_checked = False  # set by the CLI, which checks them before anything is written
        self.stopped_by: Optional[BaseException] = None
        self._locks: list[RunLock] = []  # taken here only without the CLI
        self.store: Optional[RoundStore] = None
        self._restored = False
        self._trainer: Any = None  # for state_dict: where in the schedule a checkpoint is saved
        self.divergence = DivergenceWatch()  # the first NaN loss, named before the reward sees NaN samples

    @property
    def _store(self) -> RoundStore:
        if self.store is None:
            raise RuntimeError("RetrainingLoop: the round store is set in setup(); use the loop inside Trainer.fit")
        return self.store

    @property
    def _run_dir(self) -> Path:
        return self.writer.directory

    @property
    def rows(self) -> dict[int, dict[str, Any]]:
        """The finished rounds' rows, by round."""
        return self.writer.rows

    @rows.setter
    def rows(self, rows: dict[int, dict[str, Any]]) -> None:
        self.writer.rows = rows

    @property
    def run_dir(self) -> Optional[Path]:
        """Where the run writes (set in ``setup``)."""
        return self.writer.run_dir

    @run_dir.setter
    def run_dir(self, run_dir: Optional[Path]) -> None:
        self.writer.run_dir = run_dir

    @staticmethod
    def of(trainer: Any) -> Optional[RetrainingLoop]:
        """The trainer's ``RetrainingLoop``, or ``None``: how other callbacks find the round schedule."""
        return next((c for c in trainer.callbacks if isinstance(c, RetrainingLoop)), None)

    # -- setup and resume ---------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if not hasattr(pl_module, "curate_round"):
            raise TypeError(f"RetrainingLoop needs a module with curate_round() (e.g. CurationModule), "
                            f"got {type(pl_module).__name__}")
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "attach"):
            raise TypeError("RetrainingLoop needs a BlendingDataModule (the `data` section of the config)")
        self.check_backend(trainer, pl_module)
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        self.check_capacity(trainer, pl_module, datamodule, run_dir)  # before the first allocation
        if not self.components_checked:  # the CLI checks them before anything is written
            check_run_components(pl_module, datamodule)  # before any training or writing: samples drawn and scored
        if self.init == "scratch" and self._initial_state is None:
            # Rank 0's: every replica restarts each round from the same weights, whatever the seeding.
            state = {k: v.detach().cpu().clone() for k, v in pl_module.generator.state_dict().items()}
            self._initial_state = trainer.strategy.broadcast(state, 0)
        self.apply_to(trainer)  # max_epochs; the data module reloads at round starts
        if trainer.is_global_zero:  # without the CLI: lock here (the run directory, then the folders outside it)
            for folder, role in [(run_dir, "run directory"), *folders_outside(trainer, run_dir)]:
                if held_lock_for(folder) is None:
                    self._locks.append(RunLock(folder, role=role).acquire())
        self.run_dir = run_dir
        self._trainer = trainer
        self.store = RoundStore(self._run_dir / "rounds")
        datamodule.attach(self.store, self.round_of_epoch)

    @staticmethod
    def check_backend(trainer: Any, pl_module: Any) -> None:
        """``backend: triton`` where Triton cannot run fails now, not after round 0's training."""
        if getattr(pl_module, "backend", None) == "triton":
            reason = triton_unavailable_reason(trainer.strategy.root_device)
            if reason is not None:
                raise ValueError(f"backend: 'triton' cannot run here: {reason}. Use backend: auto or torch")

    def check_capacity(self, trainer: Any, pl_module: Any, datamodule: Any, run_dir: Path) -> None:
        """Refuse rounds that cannot fit on the disk or in memory (:mod:`lightning_curate.loop.sizing`)."""
        rounds_left = self.rounds + 1 - len(RoundStore(Path(run_dir) / "rounds").rounds())
        device = "cpu" if forks_later(trainer) else trainer.strategy.root_device  # no CUDA before a fork
        check_run_capacity(pl_module, datamodule, Path(run_dir), rounds_left=rounds_left, rounds=self.rounds,
                           world_size=trainer.world_size, device=device)

    def science_settings(self, pl_module: Any, datamodule: Any) -> dict[str, Any]:
        """What makes two runs the same experiment; every manifest records it and its fingerprint."""
        return science_settings(pl_module, datamodule, self, seed=self.seed, init=self.init,
                                reward_config=self.reward_config)

    def check_run_dir(self, run_dir: Path, pl_module: Any, datamodule: Any, *,
                      ckpt_path: Optional[str], checkpoint_dirs: list[Path], checkpoint_loaded: bool = False) -> None:
        """Refuse a directory this run must not write (reads only; see :mod:`lightning_curate.store.preflight`).

        ``lightning-curate`` calls it before anything is written; used without the CLI, the loop calls
        it at fit start, after the checkpoint is restored (``checkpoint_loaded``).
        """
        self.settings = {**self.science_settings(pl_module, datamodule), **recipe_settings(pl_module, datamodule)}
        store = RoundStore(Path(run_dir) / "rounds")
        self.settings_changed = check_resume(store, self.settings, ckpt_path=ckpt_path, checkpoint_dirs=checkpoint_dirs,
                                             allowed=self.allow_changed_settings, checkpoint_loaded=checkpoint_loaded,
                                             loaded_identity=self._loaded_identity,
                                             model_parameters=None if checkpoint_loaded
                                             else dict(pl_module.named_parameters()))
        stored = store.rounds()
        self.run_id = (store.read_manifest(stored[-1]).get("run_id") if stored else None) or uuid.uuid4().hex
        self.checked_dir = Path(run_dir).resolve()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Checkpoint state (load_state_dict) is restored before this hook.
        if self.checked_dir != self._run_dir.resolve():
            self.check_run_dir(self._run_dir, pl_module, trainer.datamodule, ckpt_path=None,
                               checkpoint_dirs=checkpoint_dirs(trainer, self._run_dir),
                               checkpoint_loaded=self._restored)
        stored = self._store.rounds()
        if stored and not self._restored:
            raise StoreError(
                f"{self._store.root} already holds rounds {stored} of an earlier run. Resume it with "
                "`--ckpt_path last`, or start a new run in another directory (--trainer.default_root_dir "
                "and the logger's save_dir); stored rounds are never overwritten")
        if trainer.is_global_zero:
            self._store.clean_partial()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Remember what stopped the run (the CLI tells SIGINT from a failure by it)."""
        self.stopped_by = exception

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Release the lock the loop took itself (without the CLI), however fit ended."""
        while self._locks:
            self._locks.pop().release()

    @property
    def complete(self) -> bool:
        """Whether every round of the schedule finished (the CLI exits non-zero otherwise).

        The store counts too: resuming a finished run trains nothing and rebuilds no rows.
        """
        done = set(self.rows) | set(self._store.rounds() if self.store is not None else [])
        return all(t in done for t in range(self.rounds + 1))

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self._restored:
            apply_optimizer_settings(trainer, pl_module)
        self.writer.start()
        # After a resume, rebuild the table from the store (checksums verified on read).
        for t in self._store.rounds():
            if self.last_epoch_of_round(t) < trainer.current_epoch:
                record = self._store.read(t)
                self.writer.keep(t, record.manifest["row"], record.tensors.get("preview"))

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "epochs_per_round": self.epochs_per_round,
                "initial_epochs": self.initial_epochs, "seed": self.seed,
                "finished_rounds": sorted(self.rows), "run_id": self.run_id,
                "fingerprint": fingerprint(self.settings or {}), "settings": self.settings,
                "unresumable": unresumable_reason(self._trainer, self, set(self.rows))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in ("epochs_per_round", "initial_epochs", "seed"):
            if state_dict.get(key) != getattr(self, key):
                raise ValueError(f"cannot resume: the checkpoint was made with {key}={state_dict.get(key)!r}, "
                                 f"the config now says {getattr(self, key)!r}")
        self._loaded_identity = state_dict
        self._restored = True

    # -- one round ----------------------------------------------------------
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch, batch_idx: int) -> None:
        # Keyed on the epoch, at its first batch (not in on_train_epoch_start: epoch
        # hooks are skipped on some restarts): a run resumed from an epoch-end
        # checkpoint draws what the uninterrupted run drew, with one reseed per epoch.
        if batch_idx == 0:
            seed_all(derive_seed(self.seed, "epoch", trainer.current_epoch, trainer.global_rank))

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        round_idx = self.round_of_epoch(epoch)
        if round_idx == 0 or epoch != self.first_epoch_of_round(round_idx):
            return
        if self._initial_state is not None:  # init: scratch
            pl_module.generator.load_state_dict(self._initial_state)
            for optimizer in trainer.optimizers:
                optimizer.state.clear()
        pl_module.generator.start_round(round_idx)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.divergence.update(outputs, trainer.global_step)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        self.divergence.check(pl_module, epoch)
        if not self.ends_round(epoch) or not epoch_finished(trainer):  # not if cut short
            return
        round_idx = self.round_of_epoch(epoch)
        row, preview = self._curate(trainer, pl_module, round_idx, epoch)
        self.writer.keep(round_idx, row, preview)
        if trainer.is_global_zero:
            self.writer.round_done(trainer, pl_module, round_idx, last=round_idx == self.rounds)

    def _curate(self, trainer: Any, pl_module: Any, round_idx: int, epoch: int) -> tuple[dict, Any]:
        """The round's row and preview (rank 0's; ``None`` elsewhere): reused from the store if it holds
        the round, else curated, analysed and committed."""
        # Rank 0 decides (a shared filesystem may show a fresh commit to one node before another).
        if trainer.strategy.broadcast(self._store.has(round_idx), 0):
            # Written before a crash: reuse it (the checksums are verified), never regenerate.
            # A generator that refits lazily (when it next samples) closes its round here.
            pl_module.generator.finish_round()
            record = self._store.read(round_idx)
            return record.manifest["row"], record.tensors.get("preview")
        datamodule, strategy = trainer.datamodule, trainer.strategy
        if trainer.is_global_zero:
            self._store.begin(round_idx)
        strategy.barrier("lightning_curate.round_begin")
        rank, world = trainer.global_rank, trainer.world_size

        def sink(tensors, chunk_idx):
            if getattr(trainer, "received_sigterm", False):  # between chunks: a long curation stops at once
                raise SIGTERMException()
            self._store.write_part(round_idx, tensors, rank=rank, chunk=chunk_idx)

        try:
            outcome = pl_module.curate_round(round_idx, seed=derive_seed(self.seed, "round", round_idx),
                                             label_fn=datamodule.label, class_names=datamodule.class_names,
                                             sink=sink, rank=rank, world_size=world)
        except (SIGTERMException, KeyboardInterrupt):  # stopped on purpose: no half round left behind (a
            if trainer.is_global_zero:  # failure's is kept to inspect; the next start removes it)
                self._store.abort(round_idx)
            raise
        if outcome.tensors:  # the preview and the choice logs
            self._store.write_preview(round_idx, outcome.tensors, rank=rank)
        row = {Col.ROUND: round_idx, Col.EPOCH: epoch, **datamodule.composition[round_idx], **outcome.row}
        strategy.barrier("lightning_curate.round_written")
        preview = None
        if trainer.is_global_zero:
            probe = self._store.read_preview(round_idx)
            preview = probe.get("preview")
            self.analysis.measure(pl_module, datamodule, round_idx, row, probe, self.rows.get(round_idx - 1))
            self._store.commit(round_idx, round_manifest(pl_module, datamodule, round_idx, epoch, row, seed=self.seed,
                                                         world_size=world, settings=self.settings,
                                                         settings_changed=self.settings_changed,
                                                         run_id=self.run_id))
            self.settings_changed = {}
        strategy.barrier("lightning_curate.round_committed")
        return row, preview

    # -- artifacts ----------------------------------------------------------
    @property
    def table_path(self) -> Path:
        """``rounds.csv`` of the run."""
        return self.writer.table_path

    @rank_zero_only
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self._restored:  # a resume (of a finished run too): rounds.csv rebuilt from the store, every row
            for t in self._store.rounds():
                if t not in self.rows:
                    record = self._store.read(t)
                    self.writer.keep(t, record.manifest["row"], record.tensors.get("preview"))
            if self.rows:
                self.writer.write_table()
        if not self.rows:
            return
        self.writer.finish(trainer, pl_module)  # stopped early (max_time...): the last round's figures
        checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        print(self.summary(Path(checkpoint) if checkpoint else None))
        note = fidelity_advice([self.rows[t] for t in sorted(self.rows)], self.fidelity_threshold, pl_module.generator)
        if note is not None:
            rank_zero_warn(note)

    def summary(self, last_checkpoint: Optional[Path] = None) -> str:
        """A short per-round table and where the artifacts are."""
        return self.writer.summary(last_checkpoint, self.learner_noise)


def apply_optimizer_settings(trainer: Any, pl_module: Any) -> None:
    """Set the config's ``lr`` and ``weight_decay`` on the restored optimizers' parameter groups.

    A checkpoint's optimizer state carries the values it was made with; without this a resume's new
    ``lr`` (refused unless allowed, then recorded in the manifest) would be silently ignored. Left alone
    where a scheduler owns the learning rate.
    """
    if getattr(trainer, "lr_scheduler_configs", None):
        return
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            for key in ("lr", "weight_decay"):
                value = getattr(pl_module, key, None)
                if key in group and isinstance(value, (int, float)):
                    group[key] = value
