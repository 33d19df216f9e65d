"""RecBole's quick-start pipeline for plugin and RecBole models: config, dataset, split,
model, trainer, fit, test (the shape of ``recbole.quick_start`` and RecBole-GNN's)."""
import logging
import sys
import time
from logging import getLogger

import torch
from recbole.data import create_dataset, data_preparation
from recbole.data.transform import construct_transform
from recbole.utils import get_environment, get_flops, init_logger, init_seed, set_color

from recbole_bifair.config import Config
from recbole_bifair.errors import BAD_INPUT_EXIT_CODE, BiFairInputError, exit_code_of
from recbole_bifair.model.llm_enhanced import GROUP_FAIR_FAMILIES, split_family_name
from recbole_bifair.trainer.resume import keep_last_checkpoint, remove_last_checkpoint, resume_run
from recbole_bifair.trainer import recbole_changes
from recbole_bifair.trainer.hooks import TrainerCallback
from recbole_bifair.utils import get_model, get_trainer


def prepare_run(config):
    """Dataset, splits, model and trainer for ``config``, in RecBole's order and seeding.
    In a multi-process run, each machine's local rank 0 prepares the dataset files and the LLM
    vectors' cache first."""
    from recbole_bifair.data import check_atomic_files, ensure_dataset
    from recbole_bifair.data.device_loader import training_loader
    from recbole_bifair.distributed import local_rank0_first
    from recbole_bifair.evaluator import build_item_groups

    with local_rank0_first(config):
        ensure_dataset(config)
        check_atomic_files(config)
        dataset = create_dataset(config)
        train_data, valid_data, test_data = split_dataset(config, dataset)
        train_data = training_loader(config, train_data)
        if uses_item_groups(config):
            build_item_groups(config, train_data.dataset, valid_data.dataset, test_data.dataset)
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return dataset, train_data, valid_data, test_data, model, trainer


def split_dataset(config, dataset):
    """RecBole's ``data_preparation``, with an empty training split as one clear error."""
    try:
        return data_preparation(config, dataset)
    except ValueError as error:
        if "num_samples" not in str(error):
            raise
        raise BiFairInputError(
            f"the training split of {config['dataset']} is empty ({dataset.inter_num} interactions of "
            f"{dataset.user_num - 1} users after filtering): the last interactions of each user go to "
            "valid and test, so users need at least 3 for a sequential model. Check the .inter file and "
            "the filters (user_inter_num_interval, val_interval).") from None


def uses_item_groups(config):
    """Whether the run needs item groups: a group-aware model or a fairness metric."""
    from recbole_bifair.evaluator import FAIRNESS_METRICS

    fairness = {metric.__name__.lower() for metric in FAIRNESS_METRICS}
    group_aware = split_family_name(config["model"])[0] in GROUP_FAIR_FAMILIES
    return group_aware or any(metric.lower() in fairness for metric in config["metrics"])


def run(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True,
        nproc=1, world_size=-1, ip="localhost", port="5678", group_offset=0):
    """RecBole's ``run``: one process, or ``nproc`` processes on this machine joining a group
    of ``world_size`` (several machines: the same ``ip``/``port`` of rank 0's machine, and
    ``group_offset`` = the number of processes on the machines before this one; the machines
    share ``checkpoint_dir``, where rank 0 writes). Returns rank 0's result dict on the
    machine that runs rank 0, None on the others."""
    if nproc == 1 and world_size <= 0:
        return run_recbole_bifair(model, dataset, config_file_list, config_dict, saved)
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update(
        {"world_size": nproc if world_size <= 0 else world_size, "ip": ip, "port": str(port),
         "nproc": nproc, "offset": group_offset}
    )
    try:
        mp.spawn(_run_rank, args=(model, dataset, config_file_list, config_dict, saved, queue), nprocs=nproc, join=True)
    except mp.ProcessExitedException as failure:
        if failure.exit_code == BAD_INPUT_EXIT_CODE:
            raise BiFairInputError(f"process {failure.error_index} stopped on the error printed above.") from None
        raise
    return None if queue.empty() else queue.get()


def _run_rank(local_rank, model, dataset, config_file_list, config_dict, saved, queue):
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    config_dict = {**config_dict, "local_rank": local_rank}

    def run_this_rank():
        run_recbole_bifair(model, dataset, config_file_list, config_dict, saved, queue)

    code = exit_code_of(run_this_rank)
    if code:
        sys.exit(code)


def run_recbole_bifair(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None,
                       callbacks=()):
    """Train and test ``model`` on ``dataset``; returns RecBole's result dict
    (``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``, ``test_result``)
    plus ``train_epoch_seconds`` (mean wall time of a training epoch), ``epochs`` (trained),
    ``valid_scores`` (``[epoch, score]`` per validation), ``best_epoch`` (the epoch whose model
    was tested), for LLM-enhanced models ``prior_fairness`` (the cosine recommender over ``E0``
    and the learned ``E``), and for BiFair ``hypergradient_diagnostics`` (per epoch: the
    second-order share of the hypergradient and its cosine to the direct part) and
    ``outer_parameters`` (``||E - E0|| / ||E0||`` and the learned popularity gates).
    In a multi-process run (``run``), rank 0 also puts it on ``queue``. ``callbacks``
    (``trainer.hooks.TrainerCallback``) are added to the run's trainer after its own records;
    their ``on_run_start`` gets the config, dataset and test split before training starts."""
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    dataset, train_data, valid_data, test_data, model, trainer = prepare_run(config)
    logger.info(dataset)
    logger.info(model)
    flops = get_flops(model, dataset, config["device"], logger, construct_transform(config))
    logger.info(set_color("FLOPs", "blue") + f": {flops}")

    epoch_seconds, valid_scores = [], []
    if config["resume"]:
        logger.info(f"resumed from {resume_run(trainer, config['resume'], train_data, valid_scores, epoch_seconds)}")
    if saved:
        keep_last_checkpoint(trainer, train_data, valid_scores, epoch_seconds)
    trainer.add_callback(RunRecords(epoch_seconds, valid_scores))
    for callback in callbacks:
        trainer.add_callback(callback)
    trainer.emit("on_run_start", config, dataset, test_data)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    remove_last_checkpoint(trainer)
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])

    logger.info("The running environment of this training is as follows:\n" + get_environment(config).draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "train_epoch_seconds": sum(epoch_seconds) / max(len(epoch_seconds), 1),
        "epochs": len(epoch_seconds),
        "valid_scores": valid_scores,
        "best_epoch": best_epoch(valid_scores, config["valid_metric_bigger"]),
    }
    if getattr(trainer, "diagnostics", None):
        result["hypergradient_diagnostics"] = trainer.diagnostics
    if getattr(model, "bifair", False):
        result["outer_parameters"] = model.outer_parameter_summary()
        logger.info(set_color("outer parameters", "blue") + f": {result['outer_parameters']}")
    if test_data and hasattr(model, "llm_item_embeddings") and model.llm_item_embeddings() and uses_item_groups(config):
        # prior unfairness [ours]: the cosine recommender over E0 / E, evaluated as the model was
        from recbole_bifair.evaluator import format_prior_fairness, prior_fairness

        result["prior_fairness"] = prior_fairness(
            model, trainer, test_data, train_data=train_data, show_progress=config["show_progress"])
        logger.info(format_prior_fairness(result["prior_fairness"]))
    if not config["single_spec"]:
        if config["local_rank"] + config["offset"] == 0 and queue is not None:
            queue.put(result)
        torch.distributed.destroy_process_group()
    return result


class RunRecords(TrainerCallback):
    """Keeps the run's records for its result dict: the wall time of each training epoch
    (evaluation excluded; ``epoch_seconds``) and ``[epoch, valid score]`` of each validation
    (epochs counted from 1, including those of a resumed checkpoint; ``valid_scores``)."""

    def __init__(self, epoch_seconds, valid_scores):
        self.epoch_seconds, self.valid_scores = epoch_seconds, valid_scores
        self._trained, self._started = None, None

    def on_epoch_start(self, trainer, epoch_idx):
        self._trained = epoch_idx + 1
        self._started = time.perf_counter()

    def on_epoch_end(self, trainer, epoch_idx, loss):
        self.epoch_seconds.append(time.perf_counter() - self._started)

    def on_validation(self, trainer, score, result):
        trained = trainer.start_epoch if self._trained is None else self._trained
        self.valid_scores.append([trained, float(score)])


def best_epoch(valid_scores, bigger=True):
    """The epoch whose model RecBole keeps: the last one with the best valid score (RecBole's
    early stopping counts a tie as an improvement and saves again); None without validation."""
    if not valid_scores:
        return None
    best = max if bigger else min
    target = best(score for _, score in valid_scores)
    return [epoch for epoch, score in valid_scores if score == target][-1]


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """The objective RecBole's ``HyperTuning`` calls, for plugin and RecBole models."""
    config = Config(config_dict=config_dict, config_file_list=config_file_list)
    init_seed(config["seed"], config["reproducibility"])
    logger = getLogger()
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
    init_logger(config)
    logging.basicConfig(level=logging.ERROR)
    _, train_data, valid_data, test_data, model, trainer = prepare_run(config)
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, verbose=False, saved=saved)
    test_result = trainer.evaluate(test_data, load_best_model=saved)
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }


def load_data_and_model(model_file):
    """Config, model (with the checkpoint's weights), dataset and splits from a checkpoint
    written by a plugin run (RecBole's function, resolving the plugin's models), for one
    process also when the run had several."""
    recbole_changes.apply()  # the checkpoint's pickled Config is not built, so Config.__init__ did not apply them
    checkpoint = torch.load(model_file, map_location="cpu", weights_only=False)
    config = checkpoint["config"]
    config["single_spec"] = True  # a checkpoint of a multi-process run is loaded into one process
    config["local_rank"] = 0
    config.compatibility_settings()  # RecBole's numpy aliases, which a fresh process lacks
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = split_dataset(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def save_weights(model_file, weights_file):
    """Write the weights of a checkpoint you trust (``model_file``, a pickle) to
    ``weights_file``, which holds tensors only: anyone can read it with :func:`load_weights`
    (``torch.load(..., weights_only=True)``), which runs no code."""
    from recbole_bifair.files import save_atomically

    checkpoint = torch.load(model_file, map_location="cpu", weights_only=False)
    save_atomically(dict(checkpoint["state_dict"]), weights_file)


def load_weights(model, weights_file):
    """Load weights written by :func:`save_weights` into ``model`` without unpickling objects."""
    model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    return model
