"""Callbacks on a trainer's events, so that what watches a run (its records, the last
checkpoint of a resumable run, the benchmark's per-user test values) is added to the trainer
instead of being wrapped around its methods.

Every trainer the plugin builds (``utils.get_trainer``) has :class:`TrainerHooks` first in its
classes: the plugin's own trainers inherit it, and a RecBole trainer (a plain SASRec's) comes
as a subclass of RecBole's class with the mixin in front (:func:`with_hooks`). Register a
:class:`TrainerCallback` with ``trainer.add_callback(callback)``; its methods are called, in
the order the callbacks were added, at these events:

- ``on_run_start(trainer, config, dataset, test_data)``: the quick start built the run;
- ``on_epoch_start(trainer, epoch_idx)`` / ``on_epoch_end(trainer, epoch_idx, loss)``: around
  each training epoch (``_train_epoch``; evaluation is outside it);
- ``on_validation(trainer, score, result)``: after each validation (``_valid_epoch``);
- ``on_evaluation_start(trainer, eval_data)`` / ``on_evaluation_end(trainer, eval_data,
  result)``: around each ``evaluate``, validation and test alike;
- ``on_evaluation_batch(trainer, scores, interaction)`` and ``on_evaluation_struct(trainer,
  struct)``: each evaluated batch and the data the metrics are computed from, from the
  plugin's collector (``evaluator.collector.FairnessCollector``), which the trainers use;
- ``on_checkpoint(trainer, epoch, path)``: after a checkpoint was written.

The mixin owns RecBole's entry points (``_train_epoch``, ``_valid_epoch``, ``evaluate``,
``_save_checkpoint``); a trainer that trains or saves its own way overrides ``_run_epoch`` or
``_write_checkpoint``, which are RecBole's ``_train_epoch`` and ``_save_checkpoint`` by
default.
"""
import functools


class TrainerCallback:
    """A callback: every event is a no-op until overridden."""

    def on_run_start(self, trainer, config, dataset, test_data):
        pass

    def on_epoch_start(self, trainer, epoch_idx):
        pass

    def on_epoch_end(self, trainer, epoch_idx, loss):
        pass

    def on_validation(self, trainer, score, result):
        pass

    def on_evaluation_start(self, trainer, eval_data):
        pass

    def on_evaluation_batch(self, trainer, scores, interaction):
        pass

    def on_evaluation_struct(self, trainer, struct):
        pass

    def on_evaluation_end(self, trainer, eval_data, result):
        pass

    def on_checkpoint(self, trainer, epoch, path):
        pass


class TrainerHooks:
    """The mixin that calls the registered callbacks at a trainer's events (module docstring)."""

    def __init__(self, config, model):
        self.callbacks = []
        super().__init__(config, model)
        collector = getattr(self, "eval_collector", None)
        if collector is not None and hasattr(collector, "listen"):
            collector.listen(self)

    def add_callback(self, callback):
        """Call ``callback``'s methods at this trainer's events, after those added before it."""
        self.callbacks.append(callback)
        return callback

    def emit(self, event, *args):
        """Call ``event`` of every callback with this trainer and ``args``."""
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        self.emit("on_epoch_start", epoch_idx)
        loss = self._run_epoch(train_data, epoch_idx, *args, **kwargs)
        self.emit("on_epoch_end", epoch_idx, loss)
        return loss

    def _run_epoch(self, train_data, epoch_idx, *args, **kwargs):
        """One training epoch: the RecBole trainer's own, unless a trainer overrides this."""
        return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)

    def _valid_epoch(self, *args, **kwargs):
        score, result = super()._valid_epoch(*args, **kwargs)
        self.emit("on_validation", score, result)
        return score, result

    def evaluate(self, eval_data, *args, **kwargs):
        self.emit("on_evaluation_start", eval_data)
        result = super().evaluate(eval_data, *args, **kwargs)
        self.emit("on_evaluation_end", eval_data, result)
        return result

    def _save_checkpoint(self, epoch, *args, **kwargs):
        path = kwargs.get("saved_model_file", self.saved_model_file)
        self._write_checkpoint(epoch, *args, **kwargs)
        self.emit("on_checkpoint", epoch, path)

    def _write_checkpoint(self, epoch, *args, **kwargs):
        """Write a checkpoint: the RecBole trainer's own, unless a trainer overrides this."""
        return super()._save_checkpoint(epoch, *args, **kwargs)


@functools.lru_cache(maxsize=None)
def with_hooks(trainer_class):
    """``trainer_class`` with :class:`TrainerHooks` in front (itself when it has them already);
    the same class for the same ``trainer_class``, under the same name."""
    if issubclass(trainer_class, TrainerHooks):
        return trainer_class
    return type(trainer_class.__name__, (TrainerHooks, trainer_class),
                {"__module__": __name__, "__qualname__": trainer_class.__qualname__,
                 "__doc__": trainer_class.__doc__})
