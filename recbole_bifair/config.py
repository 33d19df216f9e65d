"""The plugin's ``Config``: RecBole's, with model names resolved by the plugin first and the
plugin's YAML files layered over RecBole's (the shape of RecBole-GNN's ``Config``), string
values read by a literal parser instead of RecBole's ``eval``, and one clear error for each
bad setting."""
import difflib
import functools
import os
import re
import sys

from recbole.config import Config as RecBoleConfig

from recbole_bifair import compat
from recbole_bifair.config_values import command_line_options, literal_value
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.model.llm_enhanced import GROUP_FAIR_FAMILIES, split_family_name
from recbole_bifair.trainer import recbole_changes
from recbole_bifair.utils import get_model, properties_dir


class Config(RecBoleConfig):
    """Configuration for plain RecBole models and the plugin's ``LLM<Backbone>`` /
    ``BiFair<Backbone>`` models.

    Internal configuration, lowest priority first: RecBole's ``overall.yaml``, the backbone's
    ``<Backbone>.yaml``, RecBole's dataset and quick-start YAMLs, then the plugin's
    ``overall.yaml``, ``dataset/<dataset>.yaml``, ``llm.yaml`` (the plugin's families: the LLM
    item representations), ``model/GroupFair.yaml`` (group-aware
    families), ``model/<Family>.yaml``, ``model/<Backbone>.yaml`` (the backbone's LLM settings,
    e.g. ``llm_item_tables``, shared by all families) and ``model/<Model>.yaml``. Config files,
    ``config_dict`` and ``--key=value`` override all of them, as in RecBole.
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None):
        recbole_changes.apply()  # every plugin run builds this Config first
        super().__init__(model, dataset, config_file_list, config_dict)

    def _convert_config_dict(self, config_dict):
        """RecBole's conversion of string values (``"2"`` -> 2, ``"[10, 20]"`` -> a list), by a
        literal parser: RecBole ``eval``s them, so a value in a shared spec or command could run
        code."""
        return {key: literal_value(value) if isinstance(value, str) else value
                for key, value in config_dict.items()}

    def _load_config_files(self, file_list):
        """RecBole's, with one clear error for a missing, unreadable, malformed or non-mapping
        file; an empty file holds no settings."""
        settings = {}
        for path in file_list or []:
            settings.update(read_config_file(path, self.yaml_loader))
        return settings

    def _load_cmd_line(self):
        """RecBole's ``--key=value`` options (the value is everything after the first ``=``),
        where an option without a key or one given twice with different values is one clear
        error."""
        if "ipykernel_launcher" in sys.argv[0]:
            return {}
        return self._convert_config_dict(command_line_options(sys.argv[1:]))

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if isinstance(model, str):
            model = get_model(model)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        family, backbone_name = split_family_name(model)
        super()._load_internal_config_dict(backbone_name if family else model, model_class, dataset)
        for file_name in plugin_yaml_files(model, family, dataset):
            self._update_internal_config_dict(file_name)

    def _get_final_config_dict(self):
        final_config = super()._get_final_config_dict()
        return compat.default_no_negative_sampling_for_ce(final_config, self.external_config_dict)

    def _init_device(self):
        """RecBole's device set-up, except that a multi-process run may use ``gloo`` on CPUs
        (``ddp_backend``; RecBole's own path always starts ``nccl`` on CUDA), and that too few
        GPUs for ``nproc`` is a clear error. ``CUDA_VISIBLE_DEVICES`` is set from ``gpu_id``
        before CUDA is first asked about, so the processes use the GPUs named there."""
        config = self.final_config_dict
        if "local_rank" not in config:
            return super()._init_device()
        import torch

        from recbole_bifair.distributed import choose_backend, init_cpu_process_group

        gpu_id = config["gpu_id"]
        gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
        config["gpu_id"] = gpu_id
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
        if choose_backend(config["ddp_backend"], bool(gpu_id) and torch.cuda.is_available()) == "gloo":
            init_cpu_process_group(config)
            return None
        if len(gpu_id.split(",")) < config["nproc"]:
            raise BiFairInputError(
                f"{config['nproc']} processes on GPUs need {config['nproc']} GPUs in gpu_id, got '{gpu_id}': "
                f"e.g. --gpu_id={','.join(map(str, range(config['nproc'])))}, or ddp_backend: gloo to run on CPUs."
            )
        return super()._init_device()

    def _set_default_parameters(self):
        check_unknown_keys(self.external_config_dict)
        check_run_settings(self.final_config_dict)
        check_plugin_settings(self.final_config_dict, split_family_name(self.model)[0])
        super()._set_default_parameters()
        check_valid_metric(self.final_config_dict)
        self._keep_users_valid_metric_direction()

    def _keep_users_valid_metric_direction(self):
        """RecBole derives ``valid_metric_bigger`` from the metric's name, over the user's own
        value; a trade-off of several metrics has no such name, so the user must give it."""
        from recbole_bifair.trainer.valid_score import parse_valid_metric

        if "valid_metric_bigger" in self.external_config_dict:
            self.final_config_dict["valid_metric_bigger"] = bool(self.external_config_dict["valid_metric_bigger"])
        elif len(parse_valid_metric(self.final_config_dict["valid_metric"])) > 1:
            raise BiFairInputError(
                f"valid_metric '{self.final_config_dict['valid_metric']}' combines several metrics: set "
                "valid_metric_bigger (True when larger values of the combination are better)."
            )


def read_config_file(path, yaml_loader):
    """The settings of one YAML config file (a mapping of keys to values)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            settings = yaml.load(f.read(), Loader=yaml_loader)
    except OSError as error:
        raise BiFairInputError(f"config file {path} cannot be read ({error.strerror}); check --config_files.") from None
    except UnicodeDecodeError:
        raise BiFairInputError(f"config file {path} is not UTF-8 text; save it as UTF-8.") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f", line {where.line + 1}" if where is not None else ""
        raise BiFairInputError(
            f"config file {path}{line} is not valid YAML ({getattr(error, 'problem', None) or error}); "
            "write one `key: value` per line.") from None
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise BiFairInputError(
            f"config file {path} holds a {type(settings).__name__}, not settings; write one `key: value` per line.")
    return settings


def check_unknown_keys(settings):
    """A key the user set that no one reads but that is close to a known key (a misspelt
    ``--balancer_temprature=2``) is one error naming the nearest known key. Known: the keys of
    every YAML file of the plugin and of RecBole, the keys either's code reads from a config,
    and the entry points' own options. Other unknown keys are left alone, as RecBole does."""
    known = known_config_keys()
    for key in settings:
        if not isinstance(key, str) or key in known:
            continue
        nearest = difflib.get_close_matches(key, known, n=1, cutoff=UNKNOWN_KEY_CUTOFF)
        if nearest:
            raise BiFairInputError(f"unknown setting '{key}': did you mean '{nearest[0]}'? (no setting is named '{key}')")


UNKNOWN_KEY_CUTOFF = 0.85  # difflib's similarity from which an unknown key counts as a misspelling

_READ_KEY = re.compile(r"""config(?:_dict)?(?:\.get\(\s*|\[\s*)["'](\w+)["']|config_value\(\s*\w+,\s*["'](\w+)["']"""
                       r"""|(?:number|choice|flag|positive_int|non_negative_int)\(\s*config,\s*["'](\w+)["']"""
                       r"""|add_argument\(\s*["']--(\w+)["']""")


@functools.lru_cache(maxsize=1)
def known_config_keys():
    """Every key a run may set (``check_unknown_keys``), read once from the YAML files and the
    code of the plugin and of RecBole."""
    import recbole
    import yaml
    from recbole.utils import argument_list

    keys = set()
    for root in (properties_dir(), os.path.join(os.path.dirname(recbole.__file__), "properties")):
        for folder, _, files in os.walk(root):
            for name in files:
                if name.endswith(".yaml"):
                    with open(os.path.join(folder, name), encoding="utf-8") as f:
                        keys.update(yaml.safe_load(f) or {})
    for package in (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(recbole.__file__)):
        for folder, _, files in os.walk(package):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(folder, name), encoding="utf-8") as f:
                        keys.update(k for match in _READ_KEY.findall(f.read()) for k in match if k)
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys.update(getattr(argument_list, name, ()))
    return sorted(k for k in keys if isinstance(k, str))


OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam")


def check_plugin_settings(config, family):
    """The plugin's settings blocks (``item_group``, ``rerank``) and those of its families
    (``llm.settings``, ``trainer.settings``), built here once so that a bad value is one error
    before the data is read."""
    from recbole_bifair.config_values import number
    from recbole_bifair.data.device_loader import fast_loader_mode
    from recbole_bifair.evaluator.groups import item_group_config
    from recbole_bifair.evaluator.rerank import rerank_config
    from recbole_bifair.llm.settings import LLMLayerSettings
    from recbole_bifair.trainer.settings import (
        GroupFairSettings, OuterLevelSettings, refuse_learned_weights_outside_bifair,
    )

    item_group_config(config)
    rerank_config(config)
    fast_loader_mode(config)
    if family is not None:
        LLMLayerSettings.from_config(config)
    if family in GROUP_FAIR_FAMILIES:
        GroupFairSettings.from_config(config)
        if family != "BiFair":
            refuse_learned_weights_outside_bifair(config)
    if family == "BiFair":
        OuterLevelSettings.from_config(config)
    if family == "LogitAdj":
        number(config, "logit_adjust_tau", minimum=0.0)


def check_run_settings(config):
    """RecBole's training and evaluation settings: each bad value is one error before the data
    is read (RecBole would fail later with a traceback, or fall back silently: ``epochs: 0``
    tests an untrained model, an unknown ``learner`` becomes Adam)."""
    from recbole.evaluator.register import metrics_dict

    from recbole_bifair.config_values import non_negative_int, number, positive_int

    for key in ("epochs", "train_batch_size", "eval_batch_size"):
        positive_int(config, key)
    non_negative_int(config, "stopping_step")
    number(config, "learning_rate", minimum=0, strictly_above=True)
    for key in ("learner", "outer_learner"):
        if key not in config:
            continue
        learner = config[key]
        if not isinstance(learner, str) or learner.lower() not in OPTIMIZERS:
            raise BiFairInputError(f"{key} must be one of {', '.join(OPTIMIZERS)}; got {learner!r}.")
    metrics = config["metrics"]
    if isinstance(metrics, str):
        metrics = config["metrics"] = [metrics]
    unknown = [m for m in metrics if not isinstance(m, str) or m.lower() not in metrics_dict]
    if unknown:
        raise BiFairInputError(
            f"unknown metric(s) {', '.join(map(str, unknown))} in metrics; known: {', '.join(sorted(metrics_dict))}.")
    topk = config.get("topk")
    topk = [topk] if isinstance(topk, int) else topk
    if topk is not None and (not isinstance(topk, list) or not all(
            isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in topk)):
        raise BiFairInputError(f"topk must be a positive integer or a list of them; got {config.get('topk')!r}.")


def check_valid_metric(config):
    """``valid_metric`` (a metric or a trade-off such as ``ndcg@10 - 0.5 * ndcggap@10``) must
    name metrics the run computes: checked before training, not after the first epoch."""
    from recbole_bifair.trainer.valid_score import parse_valid_metric

    metrics = {m.lower() for m in config["metrics"]}
    topk = {str(k) for k in config["topk"]} if config.get("topk") else set()
    for _, name in parse_valid_metric(config["valid_metric"]):
        metric, _, k = name.partition("@")
        k = k.split("_")[0]
        if metric not in metrics or (k and topk and k not in topk):
            raise BiFairInputError(
                f"valid_metric '{config['valid_metric']}' needs {name}, but metrics={config['metrics']} "
                f"topk={config['topk']} do not compute it; add the metric, or choose valid_metric among them."
            )


def plugin_yaml_files(model, family, dataset):
    """The plugin's YAML files that exist for ``model`` and ``dataset``, lowest priority first."""
    root = properties_dir()
    candidates = [os.path.join(root, "overall.yaml"), os.path.join(root, "dataset", dataset + ".yaml")]
    if family is not None:
        candidates.append(os.path.join(root, "llm.yaml"))
    if family in GROUP_FAIR_FAMILIES:
        candidates.append(os.path.join(root, "model", "GroupFair.yaml"))
    if family is not None:
        _, backbone = split_family_name(model)
        candidates.append(os.path.join(root, "model", family + ".yaml"))
        candidates.append(os.path.join(root, "model", backbone + ".yaml"))
    candidates.append(os.path.join(root, "model", model + ".yaml"))
    return [path for path in candidates if os.path.isfile(path)]
