"""Training runs: one set-up (``setup.prepare``), two loops that never import each other (``fit_loop`` for
every strategy but multi-worker, ``multiworker_loop`` for ``MultiWorkerMirroredStrategy``), shared callbacks,
checkpoints and history, and one final report (``finish``) scored by ``kseg.evaluation``.

The run directory holds ``config.json`` (the resolved config), ``best.keras`` (the run's model: by default the
epoch with the best validation score; ``TrainConfig.keep``), ``last.keras`` and ``average.keras``,
``checkpoints/`` (last epoch: weights, optimizer, epoch, training time), ``history.csv``, ``logs/``
(TensorBoard), ``curves.png``, ``predictions.png`` and ``metrics.json``. Running the same config again after
a crash resumes it; after it finished, it reports the finished run and changes nothing.
"""

from __future__ import annotations

import logging
import pathlib

from kseg.training.config import TrainConfig

log = logging.getLogger(__name__)


def run(config: TrainConfig, *, verbose="auto") -> dict:
    """Train as ``config`` says, write the run directory and return the contents of ``metrics.json``. With
    ``config.folds``, a cross-validation run: each fold is a run of its own (``kseg.training.folds``)."""
    if config.folds is not None and not _is_one_fold(config):
        from kseg.training import folds

        return folds.run(config, lambda fold_config: _run_one(fold_config, verbose))
    return _run_one(config, verbose)


def _is_one_fold(config: TrainConfig) -> bool:
    """A fold's own config (its directory ``RUN/fold-k``), not ``--folds K [--fold k]`` naming the folds run."""
    from kseg.data.folds import fold_dir

    return config.fold is not None and pathlib.Path(config.output_dir).name == fold_dir(".", config.fold).name


def _run_one(config: TrainConfig, verbose) -> dict:
    from kseg import data
    from kseg.core import distribute, files
    from kseg.training import setup

    # The strategy comes first: multi-worker collectives must be configured before TensorFlow's runtime
    # starts, and reading a dataset starts it.
    strategy = distribute.make_strategy(config.strategy, config.tpu)
    run_dir = pathlib.Path(config.output_dir)
    if not distribute.is_chief(strategy):  # the chief holds the run directory; the others only read it
        return _train(config, strategy, run_dir, verbose)
    files.check_output_dir(run_dir)
    files.check_outside_inputs(run_dir, data.input_folders(config.dataset, config.data_dir, config.manual_dir))
    setup.check_resumable(run_dir, config)
    with files.folder_lock(run_dir, "a kseg.train run"):
        return _train(config, strategy, run_dir, verbose)


def _train(config: TrainConfig, strategy, run_dir: pathlib.Path, verbose) -> dict:
    import keras

    from kseg.training import checkpoints, finish, fit_loop, multiworker_loop, setup

    state = checkpoints.read_state(run_dir / "checkpoints")
    finished = finish.read_metrics(run_dir) if state.epoch >= config.epochs else None
    if finished is not None:
        log.info(
            f"{run_dir} is a finished run ({state.epoch} of {config.epochs} epochs); its metrics.json is "
            f"kept as it is. Choose a new --output-dir to train again"
        )
        return finished
    multiworker = config.strategy == "multiworker"
    is_tpu = config.strategy == "tpu"
    with setup.precision_scope(config):
        # What the run really trains in: --mixed-precision asks for it, the device decides (kseg.core.distribute).
        precision = keras.mixed_precision.global_policy().name
        prepared = setup.prepare(config, strategy, drop_remainder=multiworker or is_tpu, repeat=multiworker)
        if multiworker:
            multiworker_loop.train(prepared, verbose=verbose)
        else:
            fit_loop.train(prepared, verbose=verbose)
    if not prepared.chief:
        return {}
    return finish.finish_run(config, prepared.spec, run_dir, prepared.state, precision=precision)
