"""The prior-unfairness report: how fair the LLM item representations are on their own [ours].

The paper splits unfairness into prior unfairness, already in the LLM item table ``E``, and
training unfairness, added by training. This module is our reconstruction of that
decomposition's first part. It uses a recommender that needs no training. A user's vector is the
mean of the table rows of the items in their history, and every item is scored by its cosine
similarity to that vector. The recommender is then evaluated the way the run evaluates its own
model: the trainer's ``evaluate``, the same collector (item groups, re-ranker), the same metrics
and ``topk``, the same split and protocol.

History: for a sequential model, the evaluated row's item sequence (padding 0 ignored, up to the
row's length); for a general model, the user's interactions in the training split. RecBole's
full-ranking evaluation masks history items as it does for the model (a general model's known
items; nothing for sequential models).

    from recbole_bifair.evaluator import prior_fairness
    report = prior_fairness(model, trainer, test_data, train_data=train_data)
    report["E0"]["ndcggap@10"], report["E"]["ndcggap@10"]

``E0`` is the LLM's own table (``llm_weight_init``) and ``E`` the current table
(``llm_weight``), both of the model's first LLM layer. Both are always evaluated. ``E`` equals
``E0`` for ``LLM<Backbone>`` models with the default ``llm_freeze`` and for BiFair with the
outer level off.
"""
import torch
import torch.nn.functional as F
from recbole.utils import ModelType, set_color
from torch import nn

from recbole_bifair.errors import BiFairInputError

TABLES = ("E0", "E")
REPORT_TITLE = "prior fairness (cosine recommender over E0 / learned E)"


def sequence_means(table, seq, seq_len):
    """[batch, d]: the mean of ``table``'s rows of each item sequence's first ``seq_len`` items
    (padding 0, and ids beyond the table, ignored)."""
    seq = seq.long()
    positions = torch.arange(seq.shape[1], device=seq.device).unsqueeze(0)
    n_rows = table.shape[0]
    keep = (seq > 0) & (seq < n_rows)
    keep &= positions < seq_len.unsqueeze(1)
    rows = table[seq.clamp(max=n_rows - 1)] * keep.unsqueeze(-1).to(table.dtype)
    return rows.sum(dim=1) / keep.sum(dim=1, keepdim=True).clamp(min=1).to(table.dtype)


def history_matrix(history, n_users, n_items):
    """The sparse ``[n_users, n_items]`` matrix whose row u averages u's items in ``history``
    (``(user_ids, item_ids)``; each interaction counts once); a user without history has an
    empty row. ``matrix @ table`` is then every user's mean history vector."""
    users, items = (torch.as_tensor(ids).long().cpu() for ids in history)
    counts = torch.bincount(users, minlength=n_users).clamp(min=1)
    values = 1.0 / counts[users].float()
    indices = torch.stack([users, items])
    return torch.sparse_coo_tensor(indices, values, (n_users, n_items), check_invariants=True).coalesce()


def history_means(table, matrix):
    """[n_users, d]: each user's mean history row of ``table`` (``matrix``: :func:`history_matrix`)."""
    return torch.sparse.mm(matrix.to(device=table.device, dtype=table.dtype), table)


class HistoryFields:
    """Where a row's history is read from: a sequential model's item sequence and its length,
    a general model's user id (whose history is the training split's interactions)."""

    def __init__(self, config, sequential):
        self.sequential = sequential
        self.USER_ID = config["USER_ID_FIELD"]
        self.ITEM_ID = config["ITEM_ID_FIELD"]
        self.ITEM_SEQ = self.ITEM_ID + config["LIST_SUFFIX"]
        self.ITEM_SEQ_LEN = config["ITEM_LIST_LENGTH_FIELD"]

    def sequence_means(self, table, interaction):
        return sequence_means(table, interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])

    def training_history(self, train_dataset):
        """``(user_ids, item_ids)`` of the training split's interactions."""
        inter = train_dataset.inter_feat
        return inter[self.USER_ID], inter[self.ITEM_ID]


class CosineRecommender(nn.Module):
    """A recommender with no training over an item table ``[n_items, d]`` (row 0 = padding).
    ``score(u, i) = cos(mean of the rows of u's history, table[i])``.

    ``sequential``: the history is the interaction's item sequence
    (``ITEM_ID_FIELD + LIST_SUFFIX``, length ``ITEM_LIST_LENGTH_FIELD``). Otherwise it is the
    ``(user_ids, item_ids)`` pairs of ``history``, e.g. the training split's interactions, and
    ``n_users`` sizes the table of user vectors. A user without history gets a zero vector
    (every score 0).
    """

    def __init__(self, table, config, sequential, history=None, n_users=None):
        super().__init__()
        table = table.detach().float().clone()
        self.register_buffer("table", table)
        self.register_buffer("unit_table", F.normalize(table, dim=1))  # zero rows stay zero
        self.fields = HistoryFields(config, sequential)
        if sequential:
            return
        if history is None or n_users is None:
            raise BiFairInputError(
                "The cosine recommender of a general model needs the users' history: pass train_data."
            )
        self.register_buffer("user_vectors", history_means(table, history_matrix(history, n_users, table.shape[0])))

    @classmethod
    def for_run(cls, table, config, train_dataset=None):
        """The recommender for a run's ``config``; a general model's history is the training
        split ``train_dataset`` (what ``dataset.history_item_matrix()`` holds)."""
        if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
            return cls(table, config, sequential=True)
        if train_dataset is None:
            return cls(table, config, sequential=False)  # raises the error above
        history = HistoryFields(config, sequential=False).training_history(train_dataset)
        return cls(table, config, sequential=False, history=history, n_users=train_dataset.user_num)

    def user_vectors_of(self, interaction):
        """[batch, d] mean of the history rows of each interaction row."""
        if not self.fields.sequential:
            return self.user_vectors[interaction[self.fields.USER_ID].long()]
        return self.fields.sequence_means(self.table, interaction)

    def full_sort_predict(self, interaction):
        """[batch, n_items] cosine scores of every item."""
        users = F.normalize(self.user_vectors_of(interaction), dim=1)
        return users @ self.unit_table.t()

    def predict(self, interaction):
        """[batch] cosine score of each row's item (sampled evaluation)."""
        users = F.normalize(self.user_vectors_of(interaction), dim=1)
        return (users * self.unit_table[interaction[self.fields.ITEM_ID].long()]).sum(dim=1)


class PriorLoss:
    """The cosine recommender's training loss, differentiable in the table: BiFair's
    prior-unfairness term of the outer objective (``outer_prior_weight``) [ours].

    Per example, the cross-entropy of ``softmax(cos(user, E_i) / temperature)`` over the items
    (padding excluded) at the example's item: the next item of a sequence, or a general model's
    item with the user's training history. The user vector is the cosine recommender's (the
    mean of the history's rows), computed from the table given, so the loss's gradient moves
    ``E`` itself towards a table whose recommender serves the item groups the outer weights favour.
    """

    def __init__(self, config, temperature, train_dataset=None):
        self.temperature = temperature
        self.fields = HistoryFields(config, sequential=config["MODEL_TYPE"] == ModelType.SEQUENTIAL)
        if self.fields.sequential:
            return
        if train_dataset is None:
            raise BiFairInputError("The prior loss of a general model needs the training split's history.")
        history = self.fields.training_history(train_dataset)
        self.history = history_matrix(history, train_dataset.user_num, train_dataset.item_num)

    def user_vectors(self, table, interaction):
        if self.fields.sequential:
            return self.fields.sequence_means(table, interaction)
        self.history = self.history.to(device=table.device, dtype=table.dtype)  # once, then a no-op
        return history_means(table, self.history.index_select(0, interaction[self.fields.USER_ID].long()))

    def example_losses(self, table, interaction):
        """``(losses [batch], items [batch])`` of the cosine recommender over ``table``."""
        users = F.normalize(self.user_vectors(table, interaction), dim=1)
        scores = users @ F.normalize(table, dim=1).t() / self.temperature
        padding = torch.zeros(table.shape[0], dtype=torch.bool, device=table.device)
        padding[0] = True
        items = interaction[self.fields.ITEM_ID].long()
        losses = F.cross_entropy(scores.masked_fill(padding, float("-inf")), items, reduction="none")
        return losses, items


def evaluate_table(table, trainer, eval_data, train_data=None, show_progress=False):
    """RecBole's result dict ({metric: value}, the keys of the run's own evaluation) of the
    cosine recommender over ``table`` on ``eval_data``, through ``trainer.evaluate`` with the
    trainer's model swapped for the recommender meanwhile. ``train_data`` gives a general
    model's history, and the item groups when the trainer has not collected them yet (no
    ``fit``). None when ``eval_data`` is None."""
    if not eval_data:
        return None
    config = trainer.config
    recommender = CosineRecommender.for_run(
        table.to(trainer.device), config, None if train_data is None else train_data._dataset)
    collector = trainer.eval_collector
    if train_data is not None and getattr(collector, "item_groups", None) is None:
        collector.data_collect(train_data)
    model, wandb = trainer.model, trainer.wandblogger
    log_wandb = getattr(wandb, "log_wandb", False)
    trainer.model, wandb.log_wandb = recommender, False  # not reported as the model's "eval"
    try:
        result = trainer.evaluate(eval_data, load_best_model=False, show_progress=show_progress)
    finally:
        trainer.model, wandb.log_wandb = model, log_wandb
    return dict(result)


def prior_fairness(model, trainer, eval_data, train_data=None, show_progress=False):
    """``{"E0": {metric: value}, "E": {metric: value}}``: the run's metrics on ``eval_data`` of
    the cosine recommender over the LLM's own table ``E0`` (``llm_weight_init``) and over the
    current table ``E`` (``llm_weight``) of ``model``'s first LLM layer. ``trainer`` is the
    run's trainer; ``train_data`` is needed for general models (their users' history) and
    before ``trainer.fit`` (item groups). None when ``eval_data`` is None."""
    layers = model.llm_item_embeddings() if hasattr(model, "llm_item_embeddings") else []
    if not layers:
        raise BiFairInputError(
            f"{type(model).__name__} has no LLM item layer: the prior-fairness report needs an "
            "LLM<Backbone> or BiFair<Backbone> model (or another plugin family).")
    layer = layers[0]
    if not eval_data:
        return None
    tables = {"E0": layer.llm_weight_init, "E": layer.llm_weight}
    return {
        name: evaluate_table(tables[name], trainer, eval_data, train_data, show_progress)
        for name in TABLES
    }


def format_prior_fairness(report):
    """The report as one log block, a line per table."""
    lines = [f"  {name:<2}: {report[name]}" for name in TABLES]
    return set_color(REPORT_TITLE, "yellow") + ":\n" + "\n".join(lines)

