"""The LLM item-embedding input layer: LLM table ``E`` -> trainable projector -> item vectors.

``LLMItemEmbedding`` replaces a backbone's ``nn.Embedding`` of items. It looks like one to the
backbone: ``forward(ids)`` returns item vectors and ``.weight`` is the whole projected table,
so backbones that score with ``self.item_embedding.weight`` work unchanged.
The projector's default shape, ``Linear(d, d/2) -> activation -> Linear(d/2, hidden)``, is our
reconstruction after LLM-ESR / AlphaRec, not the BiFair paper's (unpublished) code.
"""
import torch
from torch import nn

from recbole_bifair.errors import BiFairInputError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leakyrelu": nn.LeakyReLU,
    "identity": nn.Identity,
}


def build_projector(input_dim, output_dim, n_layers=2, hidden_dim=None, activation="gelu", dropout=0.0):
    """An MLP from the LLM dimension to the backbone's: ``n_layers`` linear layers with
    ``hidden_dim`` units between them (default ``input_dim // 2``)."""
    if not isinstance(n_layers, int) or n_layers < 1:
        raise BiFairInputError(f"projector_layers must be an integer >= 1, got {n_layers!r}.")
    if activation not in ACTIVATIONS:
        raise BiFairInputError(
            f"projector_activation '{activation}' is unknown; choose one of {sorted(ACTIVATIONS)}."
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise BiFairInputError(f"projector_dropout must be in [0, 1), got {dropout!r}.")
    hidden_dim = hidden_dim or max(1, input_dim // 2)
    widths = [input_dim] + [hidden_dim] * (n_layers - 1) + [output_dim]
    layers = []
    for i in range(n_layers):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < n_layers - 1:
            layers += [ACTIVATIONS[activation](), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class LLMItemEmbedding(nn.Module):
    """Item vectors ``v_i = P_theta(E_i)`` for the rows of an LLM table ``E``.

    Args:
        llm_table: ``[n_items, d]`` LLM vectors, row ``padding_idx`` ignored (its output is 0).
        projector: maps ``d`` to the backbone's item dimension.
        freeze: keep ``E`` fixed (LLM-enhanced baseline) or let gradients reach it (BiFair's
            outer level, or joint fine-tuning).
        n_extra_rows: trainable vectors appended after the LLM rows, for backbones whose item
            table has rows that are no items (BERT4Rec's mask token).

    ``llm_weight_init`` keeps a frozen copy ``E0`` of the table for BiFair's proximity term.
    """

    def __init__(self, llm_table, projector, freeze=True, padding_idx=0, n_extra_rows=0):
        super().__init__()
        llm_table = torch.as_tensor(llm_table, dtype=torch.float32)
        self.llm_weight = nn.Parameter(llm_table.clone(), requires_grad=not freeze)
        self.register_buffer("llm_weight_init", llm_table.clone())
        self.projector = projector
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
        """Project LLM rows, with the padding item's output set to zero."""
        out = self.projector(llm_rows)
        return out * (ids != self.padding_idx).unsqueeze(-1).to(out.dtype)

    @property
    def weight(self):
        """The whole projected item table ``[num_embeddings, embedding_dim]``."""
        ids = torch.arange(self.n_llm_rows, device=self.llm_weight.device)
        return torch.cat([self.project(self.llm_weight, ids), self.extra_weight], dim=0)

    def forward(self, ids):
        """Item vectors for ``ids`` of any shape; each distinct item is projected once."""
        unique_ids, inverse = torch.unique(ids, return_inverse=True)
        is_llm_row = unique_ids < self.n_llm_rows
        llm_ids = unique_ids[is_llm_row]
        vectors = unique_ids.new_zeros((unique_ids.shape[0], self.embedding_dim), dtype=self.llm_weight.dtype)
        vectors[is_llm_row] = self.project(self.llm_weight[llm_ids], llm_ids)
        if (~is_llm_row).any():
            vectors[~is_llm_row] = self.extra_weight[unique_ids[~is_llm_row] - self.n_llm_rows]
        return vectors[inverse]

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}, llm_dim={self.llm_dim}, frozen={not self.llm_weight.requires_grad}"
