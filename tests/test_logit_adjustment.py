"""LogitAdj<Backbone>: training on scores plus tau * log prior, ranking on the scores alone."""
import pytest
import torch
from torch.nn import functional as F

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.evaluator.groups import training_item_counts
from recbole_bifair.model.llm_enhanced import LogitAdjustedCrossEntropy


def test_the_loss_is_cross_entropy_of_the_shifted_logits():
    counts = torch.tensor([0, 10, 5, 1, 0])
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 2, 3])
    prior = counts.clamp(min=1).double() / counts.clamp(min=1).sum()
    for tau in (0.0, 0.5, 1.0):
        expected = F.cross_entropy(logits + tau * prior.log().float(), target)
        assert torch.allclose(LogitAdjustedCrossEntropy(counts, tau)(logits, target), expected)
    # the shift favours popular targets in training: a rare target's loss rises, a popular one's falls
    plain = F.cross_entropy(logits, target, reduction="none")
    shifted = LogitAdjustedCrossEntropy(counts, 1.0)
    shifted.reduction = "none"
    change = shifted(logits, target) - plain
    assert change[2] > change[0]  # item 3 (1 interaction) against item 1 (10)


def test_logit_adjusted_sasrec_trains_on_the_shift_and_ranks_without_it(tiny):
    config, train_data, valid_data, test_data, model, trainer = tiny(model="LogitAdjSASRec", logit_adjust_tau=0.7)
    assert isinstance(model.loss_fct, LogitAdjustedCrossEntropy) and model.loss_fct.tau == 0.7
    counts = torch.as_tensor(training_item_counts(train_data.dataset)).clamp(min=1).double()
    batch = next(iter(train_data)).to(model.device)
    model.eval()  # no dropout, so the loss and the hand-made one see the same scores
    seq_output = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    logits = seq_output @ model.item_embedding.weight.T
    expected = F.cross_entropy(logits + 0.7 * (counts / counts.sum()).log().float(), batch[model.POS_ITEM_ID])
    assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-6)
    assert not torch.allclose(model.calculate_loss(batch), F.cross_entropy(logits, batch[model.POS_ITEM_ID]))
    assert torch.allclose(model.full_sort_predict(batch), logits, atol=1e-6)  # ranking: no prior
    trainer.fit(train_data, valid_data, saved=False)
    assert "ndcggap@10" in trainer.evaluate(test_data, load_best_model=False)


@pytest.mark.parametrize("model, overrides", [("LogitAdjBERT4Rec", {}), ("LogitAdjSASRec", {"loss_type": "BPR"})])
def test_backbones_without_a_softmax_loss_module_are_one_clear_error(tiny, model, overrides):
    with pytest.raises(BiFairInputError, match="full-softmax"):
        tiny(model=model, **overrides)


def test_a_negative_tau_is_refused_before_the_data_is_read(tiny):
    with pytest.raises(BiFairInputError, match="logit_adjust_tau"):
        tiny(model="LogitAdjSASRec", logit_adjust_tau=-1)
