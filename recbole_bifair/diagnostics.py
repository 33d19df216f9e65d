"""Offline diagnostics of trained checkpoints (no training): :func:`hypergradient_diagnostic`,
the second-order share of BiFair's hypergradient for a saved ``BiFair<Backbone>``. A module of
the top layer: it loads a run through the quick start and measures with the trainer's step."""
import time
from dataclasses import replace

import torch

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.quick_start import load_data_and_model
from recbole_bifair.trainer import BiFairTrainer


def hypergradient_diagnostic(model_file, n_batches=8, hypergradient="exact", **settings):
    """The second-order share of BiFair's hypergradient for a saved ``BiFair<Backbone>``
    checkpoint, without training: the mean over ``n_batches`` consecutive pairs of training
    batches (look-ahead batch, meta batch) of ``||second-order part|| / ||direct part||``, the
    cosine between the full hypergradient and its direct part, and the seconds one
    hypergradient took, for ``hypergradient`` (``exact``, ``implicit`` or ``finite_difference``)
    and any other setting of ``HypergradientSettings`` (``steps``, ``update``, ...). The inner
    optimiser's state is the checkpoint's; the balancers start fresh (uniform-like weights). A
    checkpoint trained without a look-ahead (``lookahead_lr: 0``) is measured with one SGD step of
    its ``learning_rate``: the share a look-ahead would add there."""
    if hypergradient == "first_order":
        raise BiFairInputError("first_order has no second-order part to measure; use exact, implicit or finite_difference.")
    config, model, _, train_data, _, _ = load_data_and_model(model_file)
    trainer = BiFairTrainer(config, model)
    step = trainer.set_up(train_data)
    checkpoint = torch.load(model_file, map_location=trainer.device, weights_only=False)
    if "optimizer" in checkpoint:  # lookahead_update: optimizer follows the trained Adam state
        trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    settings = replace(trainer.hypergradient, mode=hypergradient, **settings)
    if settings.lookahead_is_identity:
        settings = replace(settings, xi=config["learning_rate"])
    model.train()
    shares, cosines, previous, seconds = [], [], None, 0.0
    for batch in train_data:
        batch = batch.to(trainer.device)
        if previous is not None:
            started = time.perf_counter()
            result = step.hypergradient(previous, batch, settings, *step.group_weighting_copy())
            seconds += time.perf_counter() - started
            shares.append(result.second_order_share())
            cosines.append(result.cosine_to_direct())
        if len(shares) >= n_batches:
            break
        previous = batch
    if not shares:
        raise BiFairInputError(f"{model_file}: the training split has fewer than 2 batches; nothing to measure.")
    return {"second_order_share": float(torch.tensor(shares).mean()),
            "cosine_to_direct": float(torch.tensor(cosines).mean()), "batches": len(shares),
            "hypergradient": settings.mode, "seconds_per_hypergradient": seconds / len(shares)}
