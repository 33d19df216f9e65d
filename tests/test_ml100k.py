"""LLMSASRec on the real ml-100k (bundled with RecBole): LLM vectors generated from its item
text, a few training batches, full-ranking evaluation with the fairness metrics."""
import itertools
import math

import pytest
import torch
from recbole.utils import init_seed

from recbole_bifair.config import Config
from recbole_bifair.quick_start import prepare_run


@pytest.mark.slow
def test_llmsasrec_trains_and_evaluates_on_ml100k(tmp_path, embedding_cache):
    config = Config(model="LLMSASRec", dataset="ml-100k", config_dict={
        "MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1,
        "train_batch_size": 512, "show_progress": False, "state": "WARNING",
        "checkpoint_dir": str(tmp_path), "llm_emb_cache_dir": embedding_cache,
    })
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, _, test_data, model, trainer = prepare_run(config)

    layer = model.item_embedding
    assert layer.llm_weight.shape == (1683, 384) and not layer.llm_weight.requires_grad
    assert torch.count_nonzero(layer.llm_weight[0]) == 0

    before = [p.detach().clone() for p in model.inner_parameters()]
    trainer.eval_collector.data_collect(train_data)
    loss = trainer._train_epoch(list(itertools.islice(train_data, 3)), epoch_idx=0)
    assert loss == pytest.approx(3 * math.log(1682), rel=0.1)  # 3 batches of an untrained full softmax's CE
    assert any(not torch.equal(b, p) for b, p in zip(before, model.inner_parameters()))

    result = trainer.evaluate(test_data, load_best_model=False)
    groups = [result[f"groupndcg@10_g{g}"] for g in range(5)]
    assert result["ndcgworst@10"] == pytest.approx(min(groups)) and result["ndcggap@10"] == pytest.approx(
        max(groups) - min(groups))
    assert {"ndcggap@10", "ndcgworst@10", "groupndcg@10_g4", "exposuredisparity@10"} <= set(result)
