"""The LLM item-embedding input layer: LLM table ``E`` -> trainable projector -> item vectors.

``LLMItemEmbedding`` replaces a backbone's ``nn.Embedding`` of items. It looks like one to the
backbone: ``forward(ids)`` returns item vectors and ``.weight`` is the whole projected table,
so backbones that score with ``self.item_embedding.weight`` work unchanged.

Everything here beyond "LLM vectors through a trainable projector" is our reconstruction
[ours], after public LLM-enhanced recommenders, not the BiFair paper's (unpublished) code:
- ``preprocess_llm_table``: centring, PCA whitening (after UniSRec's whitening of text
  vectors) or l2-normalising the LLM table when it is loaded;
- ``build_projector``: ``Linear(d, hidden) -> activation -> Linear(hidden, width)`` by default
  (``hidden`` = ``d/2`` unless ``projector_hidden`` is set, ``width`` the backbone's)
  (after LLM-ESR / AlphaRec; activation ``identity`` makes it linear, as LLM-ESR's adapter),
  optionally with a linear residual path;
- ``DualView``: a trainable ID table fused with the projected LLM vector (after LLM-ESR's
  collaborative + semantic views and LLMInit's LLM-initialised ID table).
"""
import torch
from torch import nn
from torch.nn import functional as F

from recbole_bifair.errors import BiFairInputError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leakyrelu": nn.LeakyReLU,
    "identity": nn.Identity,
}


LLM_PREPROCESSING = ("none", "center", "whiten", "l2")
LLM_VIEWS = ("llm", "dual")
DUAL_FUSIONS = ("sum", "concat", "gate", "popularity_gate")
ID_INITS = ("pca", "random")


def _check_dropout(key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise BiFairInputError(f"{key} must be a number in [0, 1), got {value!r}.")


def check_projector(n_layers, hidden_dim, activation, dropout, input_dropout):
    """One error, naming its config key, for each bad projector setting."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise BiFairInputError(f"projector_layers must be an integer >= 1, got {n_layers!r}.")
    if hidden_dim is not None and (isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1):
        raise BiFairInputError(f"projector_hidden must be a positive integer or ~, got {hidden_dim!r}.")
    if activation not in ACTIVATIONS:
        raise BiFairInputError(
            f"projector_activation '{activation}' is unknown; choose one of {sorted(ACTIVATIONS)}."
        )
    _check_dropout("projector_dropout", dropout)
    _check_dropout("projector_input_dropout", input_dropout)


def build_projector(input_dim, output_dim, n_layers=2, hidden_dim=None, activation="gelu", dropout=0.0,
                    residual=False, input_dropout=0.0):
    """An MLP from the LLM dimension to the backbone's: ``n_layers`` linear layers with
    ``hidden_dim`` units between them (default ``input_dim // 2``); ``residual`` adds a linear
    map of the input to the output; ``input_dropout`` drops LLM features before it."""
    check_projector(n_layers, hidden_dim, activation, dropout, input_dropout)
    hidden_dim = hidden_dim or max(1, input_dim // 2)
    widths = [input_dim] + [hidden_dim] * (n_layers - 1) + [output_dim]
    layers = []
    for i in range(n_layers):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < n_layers - 1:
            layers += [ACTIVATIONS[activation](), nn.Dropout(dropout)]
    if residual:
        return ResidualProjector(nn.Sequential(*layers), input_dim, output_dim, input_dropout)
    return nn.Sequential(*([nn.Dropout(input_dropout)] if input_dropout else []), *layers)


def projector_output_parameters(projector):
    """The parameters of the projector's output layer(s): the last linear layer, and with a
    residual path the linear map beside it."""
    if isinstance(projector, ResidualProjector):
        return list(projector.mlp[-1].parameters()) + list(projector.skip.parameters())
    return list(projector[-1].parameters())


class ResidualProjector(nn.Module):
    """``mlp(d(x)) + W d(x)``: the projector with a linear path beside it, ``d`` the dropout on
    the LLM features (both paths see the same dropped features)."""

    def __init__(self, mlp, input_dim, output_dim, input_dropout=0.0):
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout)
        self.mlp = mlp
        self.skip = nn.Linear(input_dim, output_dim, bias=False)

    def forward(self, x):
        x = self.input_dropout(x)
        return self.mlp(x) + self.skip(x)


def preprocess_llm_table(table, mode, padding_idx=0, eps=1e-6):
    """The LLM table as the layer holds it: ``none``, ``center`` (subtract the items' mean),
    ``whiten`` (PCA whitening: centred, rotated onto the principal axes, each scaled to unit
    variance; the width becomes ``min(d, n_items)``, the number of principal axes) or ``l2``
    (unit-length rows). Statistics are over the item rows, never the padding row, which stays
    zero."""
    if mode not in LLM_PREPROCESSING:
        raise BiFairInputError(f"llm_preprocess must be one of {', '.join(LLM_PREPROCESSING)}; got {mode!r}.")
    table = torch.as_tensor(table, dtype=torch.float32).clone()
    if mode == "center":
        table = table - _item_rows(table, padding_idx).mean(dim=0)
    elif mode == "whiten":
        centred, singular_values, directions = principal_axes(table, padding_idx)
        n_items = len(_item_rows(table, padding_idx))
        scale = (singular_values / max(n_items - 1, 1) ** 0.5).clamp(min=eps)
        table = (centred @ directions.T / scale).float()
    elif mode == "l2":
        table = F.normalize(table, dim=1)
    return _with_zero_padding(table, padding_idx)


def principal_axes(table, padding_idx=0):
    """``(table - mean, singular values, principal directions [rank, d])`` in float64, the mean
    and the axes taken over the item rows (all rows but the padding row)."""
    table = torch.as_tensor(table, dtype=torch.float64)
    mean = _item_rows(table, padding_idx).mean(dim=0)
    _, singular_values, directions = torch.linalg.svd(_item_rows(table, padding_idx) - mean, full_matrices=False)
    return table - mean, singular_values, directions


def _item_rows(table, padding_idx):
    keep = torch.ones(table.shape[0], dtype=torch.bool)
    if 0 <= padding_idx < table.shape[0]:
        keep[padding_idx] = False
    return table[keep]


def _with_zero_padding(table, padding_idx):
    if 0 <= padding_idx < table.shape[0]:
        table[padding_idx] = 0
    return table


def pca_item_table(llm_table, dim, std, padding_idx=0):
    """An ``[n_items, dim]`` ID table from the LLM table's top ``dim`` principal components,
    scaled to an overall standard deviation of ``std``; columns beyond the LLM's rank are
    normal noise of that std. LLM-ESR and LLMInit initialise ID tables this way."""
    centred, _, directions = principal_axes(llm_table, padding_idx)
    directions = directions[:dim]
    signs = torch.sign(directions.gather(1, directions.abs().argmax(dim=1, keepdim=True)))
    scores = centred @ (directions * signs).T
    scores = scores * (std / _item_rows(scores, padding_idx).std().clamp(min=1e-12))
    if scores.shape[1] < dim:
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(scores.shape[0], dim - scores.shape[1], generator=generator, dtype=torch.float64) * std
        scores = torch.cat([scores, noise], dim=1)
    return _with_zero_padding(scores, padding_idx).float()


class DualView(nn.Module):
    """A trainable ID table fused with the projected LLM vectors of the same items:
    ``sum`` (id + llm), ``concat`` (``Linear([id; llm])``), ``gate``
    (``g * id + (1 - g) * llm``, ``g = sigmoid(Linear([id; llm]))``) or ``popularity_gate``
    [ours]: ``s_i * id + (2 - s_i) * llm`` with ``s_i = 2 sigmoid(a + b z_i)``, ``z_i`` the
    item's standardised log training count, so two scalars decide how much rare items lean on
    their LLM vector; ``a = b = 0`` (the start) is ``sum``. BiFair's outer level can learn
    ``(a, b)`` (``gate_parameters``)."""

    def __init__(self, id_table, fusion="sum", item_counts=None):
        super().__init__()
        if fusion not in DUAL_FUSIONS:
            raise BiFairInputError(f"dual_fusion must be one of {', '.join(DUAL_FUSIONS)}; got {fusion!r}.")
        self.fusion = fusion
        self.id_weight = nn.Parameter(torch.as_tensor(id_table, dtype=torch.float32).clone())
        width = self.id_weight.shape[1]
        self.mix = None if fusion in ("sum", "popularity_gate") else nn.Linear(2 * width, width)
        if fusion == "popularity_gate":
            if item_counts is None or len(item_counts) != self.id_weight.shape[0]:
                raise ValueError("dual_fusion popularity_gate needs one training count per item row")
            self.register_buffer("popularity", standardised_log_counts(item_counts))
            self.gate_bias = nn.Parameter(torch.zeros(()))
            self.gate_slope = nn.Parameter(torch.zeros(()))

    def gate_parameters(self):
        """``[a, b]`` of the popularity gate; ``[]`` for the other fusions."""
        return [self.gate_bias, self.gate_slope] if self.fusion == "popularity_gate" else []

    def id_share(self, ids):
        """``s_i`` of the popularity gate: the weight of the ID vector, in (0, 2)."""
        return 2 * torch.sigmoid(self.gate_bias + self.gate_slope * self.popularity[ids])

    def forward(self, llm_vectors, ids):
        id_vectors = self.id_weight[ids]
        if self.fusion == "sum":
            return id_vectors + llm_vectors
        if self.fusion == "popularity_gate":
            share = self.id_share(ids).unsqueeze(-1)
            return share * id_vectors + (2 - share) * llm_vectors
        mixed = self.mix(torch.cat([id_vectors, llm_vectors], dim=-1))
        if self.fusion == "concat":
            return mixed
        gate = torch.sigmoid(mixed)
        return gate * id_vectors + (1 - gate) * llm_vectors


def standardised_log_counts(item_counts, padding_idx=0):
    """``(log(1 + c_i) - mean) / std`` over the item rows (the padding row gets 0)."""
    logs = torch.log1p(torch.as_tensor(item_counts, dtype=torch.float64))
    rows = _item_rows(logs.unsqueeze(1), padding_idx).squeeze(1)
    z = (logs - rows.mean()) / rows.std().clamp(min=1e-12)
    return _with_zero_padding(z.float().unsqueeze(1), padding_idx).squeeze(1)


class LLMItemEmbedding(nn.Module):
    """Item vectors ``v_i = P_theta(E_i)`` for the rows of an LLM table ``E``.

    Args:
        llm_table: ``[n_items, d]`` LLM vectors, row ``padding_idx`` ignored (its output is 0).
        projector: maps ``d`` to the backbone's item dimension.
        freeze: keep ``E`` fixed (LLM-enhanced baseline) or let gradients reach it (BiFair's
            outer level, or joint fine-tuning).
        n_extra_rows: trainable vectors appended after the LLM rows, for backbones whose item
            table has rows that are no items (BERT4Rec's mask token).
        dual_view: a :class:`DualView` that fuses a trainable ID table with the projected
            vectors (``llm_view: dual``), or None (``llm_view: llm``).

    ``llm_weight_init`` keeps a frozen copy ``E0`` of the table for BiFair's proximity term.
    """

    def __init__(self, llm_table, projector, freeze=True, padding_idx=0, n_extra_rows=0, dual_view=None):
        super().__init__()
        llm_table = torch.as_tensor(llm_table, dtype=torch.float32)
        self.llm_weight = nn.Parameter(llm_table.clone(), requires_grad=not freeze)
        self.register_buffer("llm_weight_init", llm_table.clone())
        self.projector = projector
        self.dual_view = dual_view
        self.padding_idx = padding_idx
        self.n_llm_rows = llm_table.shape[0]
        self.embedding_dim = self._output_dim()
        self.num_embeddings = self.n_llm_rows + n_extra_rows
        self.extra_weight = nn.Parameter(torch.empty(n_extra_rows, self.embedding_dim))
        nn.init.normal_(self.extra_weight, std=0.02)

    def _output_dim(self):
        with torch.no_grad():
            return self.projector(torch.zeros(1, self.llm_weight.shape[1])).shape[-1]

    @property
    def llm_dim(self):
        return self.llm_weight.shape[1]

    def project(self, llm_rows, ids):
        """Project LLM rows (fused with their ID vectors in the dual view), with the padding
        item's output set to zero."""
        out = self.projector(llm_rows)
        if self.dual_view is not None:
            out = self.dual_view(out, ids)
        return out * (ids != self.padding_idx).unsqueeze(-1).to(out.dtype)

    @property
    def weight(self):
        """The whole projected item table ``[num_embeddings, embedding_dim]``."""
        ids = torch.arange(self.n_llm_rows, device=self.llm_weight.device)
        return torch.cat([self.project(self.llm_weight, ids), self.extra_weight], dim=0)

    def forward(self, ids):
        """Item vectors for ``ids`` of any shape. On a CPU each distinct item is projected once;
        on a GPU the whole table is, and looked up: ``unique`` and boolean masks have
        data-dependent sizes, each a host synchronisation, and a GPU projects a table of
        thousands of rows in about the time of a few (the vectors agree within float tolerance)."""
        if self._projects_every_row(ids):
            return F.embedding(ids, self.weight)
        unique_ids, inverse = torch.unique(ids, return_inverse=True)
        is_llm_row = unique_ids < self.n_llm_rows
        llm_ids = unique_ids[is_llm_row]
        vectors = unique_ids.new_zeros((unique_ids.shape[0], self.embedding_dim), dtype=self.llm_weight.dtype)
        vectors[is_llm_row] = self.project(self.llm_weight[llm_ids], llm_ids)
        if (~is_llm_row).any():
            vectors[~is_llm_row] = self.extra_weight[unique_ids[~is_llm_row] - self.n_llm_rows]
        # an embedding lookup, not vectors[inverse]: indexing's backward accumulates the rows
        # in thread order on a CPU, so runs with several threads would not repeat exactly
        return F.embedding(inverse, vectors)

    @staticmethod
    def _projects_every_row(ids):
        return ids.is_cuda

    def extra_repr(self):
        view = "llm" if self.dual_view is None else f"dual/{self.dual_view.fusion}"
        return (f"{self.num_embeddings}, {self.embedding_dim}, llm_dim={self.llm_dim}, "
                f"frozen={not self.llm_weight.requires_grad}, view={view}")
