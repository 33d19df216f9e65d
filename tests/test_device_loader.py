"""fast_loader: the training split on the device, the same batches in the same order as RecBole's
loader (so the same trained model), disjoint DDP shards, and one clear fallback or error where it
cannot reproduce RecBole's batches."""
import logging
from types import SimpleNamespace

import pytest
import torch

from recbole_bifair.data.device_loader import DeviceTrainLoader, materialised_rows
from recbole_bifair.errors import BiFairInputError


def _batches(loader):
    return [{field: batch[field].clone() for field in ("user_id", "item_id", "item_id_list", "item_length")}
            for batch in loader]


def test_batches_are_recboles_in_the_same_order_every_epoch(tiny):
    _, recbole_loader, *_ = tiny(model="SASRec", train_batch_size=64)
    _, device_loader, *_ = tiny(model="SASRec", train_batch_size=64, fast_loader="on")
    assert isinstance(device_loader, DeviceTrainLoader) and len(device_loader) == len(recbole_loader)
    for _ in range(2):  # two epochs: the generator moves on alike
        expected, got = _batches(recbole_loader), _batches(device_loader)
        assert len(expected) == len(got)
        for a, b in zip(expected, got):
            assert all(torch.equal(a[field], b[field]) for field in a)
    rows = len(device_loader.dataset)
    sizes = [len(batch["item_id"]) for batch in got]
    assert sizes == [64] * (rows // 64) + ([rows % 64] if rows % 64 else [])


@pytest.mark.parametrize("model", ["SASRec", "LLMSASRec", "BiFairSASRec"])
def test_a_model_trained_either_way_is_the_same_model(tiny, model):
    trained = []
    for mode in ("off", "on"):
        _, train_data, valid_data, test_data, built, trainer = tiny(model=model, fast_loader=mode, epochs=2,
                                                                    train_batch_size=64)
        trainer.fit(train_data, valid_data, saved=False)
        trained.append(({n: p.detach().clone() for n, p in built.named_parameters()},
                        trainer.evaluate(test_data, load_best_model=False)))
    (params_off, test_off), (params_on, test_on) = trained
    assert all(torch.equal(params_off[n], params_on[n]) for n in params_off)
    assert test_off == test_on


def test_ddp_shards_are_disjoint_and_cover_the_split(tiny):
    _, loader, *_ = tiny(model="SASRec", train_batch_size=64)
    rows = materialised_rows(loader)
    shards = []
    for rank in (0, 1):
        sampler = torch.utils.data.distributed.DistributedSampler(list(range(loader.sample_size)), num_replicas=2,
                                                                  rank=rank, shuffle=True, drop_last=False)
        sampler.set_epoch(3)
        shard = SimpleNamespace(_dataset=loader._dataset, config=loader.config, shuffle=True, generator=loader.generator,
                                sampler=sampler, step=32, sample_size=loader.sample_size,
                                neg_sample_args=loader.neg_sample_args, transform=loader.transform)
        device_loader = DeviceTrainLoader(shard, rows)
        indices = [i for batch in device_loader._index_batches for i in batch.tolist()]
        assert indices == list(sampler), "the rank's share, in its sampler's order"
        first = next(iter(device_loader))
        assert len(first["item_id"]) == 32 and torch.equal(first["item_id"], rows["item_id"][indices[:32]])
        shards.append(indices)
    n = loader.sample_size
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    assert len(set(shards[0]) & set(shards[1])) == len(shards[0]) + len(shards[1]) - n  # DDP's padding only


@pytest.mark.parametrize("model, reason", [("BPR", "negatives"), ("BERT4Rec", "transform")])
def test_auto_falls_back_with_a_reason_and_on_refuses(tiny, caplog, model, reason):
    with caplog.at_level(logging.INFO):
        _, loader, *_ = tiny(model=model, fast_loader="auto")
    assert not isinstance(loader, DeviceTrainLoader)
    assert any("fast_loader: RecBole's loader" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    with pytest.raises(BiFairInputError, match=f"fast_loader: on cannot be used here.*{reason}"):
        tiny(model=model, fast_loader="on")


def test_a_bad_fast_loader_value_is_refused_before_the_data_is_read(tiny):
    with pytest.raises(BiFairInputError, match="fast_loader must be one of auto, on, off"):
        tiny(model="SASRec", fast_loader="fast")
