"""Multi-process training over gloo on the CPU: both levels stay in sync across ranks,
metrics are computed once over the whole split, rank 0 alone writes checkpoints."""
import glob
import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import tiny_config
from recbole_bifair import distributed


def _group_settings(world_size=2):
    return {"world_size": world_size, "nproc": world_size, "ip": "localhost", "port": distributed.free_port(), "offset": 0}


# ----- the helpers, on two processes -------------------------------------------------------------
def _check_helpers(rank, port):
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://localhost:{port}")
    try:
        # rank 0: group 0 holds 1 example of loss 1, group 1 none; rank 1: 3 of loss 3, 2 of loss 5
        losses = [torch.tensor([1.0, 0.0]), torch.tensor([3.0, 5.0])][rank]
        counts = [torch.tensor([1, 0]), torch.tensor([3, 2])][rank]
        grads = [torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([[6.0, 4.0], [1.0, 1.0]])][rank]
        mean, total, mean_grads = distributed.reduce_group_statistics(losses, counts, grads)
        assert torch.allclose(mean, torch.tensor([(1 + 9) / 4, 5.0]))
        assert torch.equal(total, torch.tensor([4, 2]))
        assert torch.allclose(mean_grads, torch.tensor([[(2 + 18) / 4, 12 / 4], [1.0, 1.0]]))

        rows = torch.arange(3 * (rank + 1)).view(-1, 3) + 10 * rank  # rank 0: 1 row, rank 1: 2 rows
        assert torch.equal(distributed.gather_rows(rows), torch.tensor([[0, 1, 2], [10, 11, 12], [13, 14, 15]]))
        flags = torch.tensor([[rank == 0, True]])
        assert torch.equal(distributed.gather_rows(flags), torch.tensor([[True, True], [False, True]]))

        param = torch.nn.Parameter(torch.zeros(2))
        param.grad = torch.full((2,), float(rank + 1))
        unused = torch.nn.Parameter(torch.zeros(1))  # no gradient on either rank
        distributed.average_gradients([param, unused])
        assert torch.equal(param.grad, torch.full((2,), 1.5)) and torch.equal(unused.grad, torch.zeros(1))
        assert distributed.broadcast_from_rank0(f"name-{rank}") == "name-0"
        assert distributed.is_main_process() == (rank == 0)
        assert distributed.check_finite_on_all_ranks(torch.tensor(1.0))
        assert not distributed.check_finite_on_all_ranks(torch.tensor([2.0, float("nan")][rank]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_reductions_gathers_and_broadcasts_across_two_ranks():
    mp.spawn(_check_helpers, args=(distributed.free_port(),), nprocs=2, join=True)


def test_single_process_helpers_are_no_ops():
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.ones(2)
    distributed.average_gradients([param])
    assert torch.equal(param.grad, torch.ones(2)) and distributed.broadcast_from_rank0(3) == 3
    assert not distributed.is_distributed()


def test_padding_rows_are_the_repeated_samples_at_the_end_of_a_rank():
    from torch.utils.data.distributed import DistributedSampler

    class Loader:
        def __init__(self, rank, size, world):
            self.sampler = DistributedSampler(list(range(size)), num_replicas=world, rank=rank, shuffle=False)

    assert [distributed.padding_rows(Loader(r, 7, 3)) for r in range(3)] == [0, 1, 1]
    assert [distributed.padding_rows(Loader(r, 6, 3)) for r in range(3)] == [0, 0, 0]
    assert distributed.padding_rows(object()) == 0


def test_backend_choice():
    from recbole_bifair.errors import BiFairInputError

    assert distributed.choose_backend("auto", cuda_available=False) == "gloo"
    assert distributed.choose_backend("auto", cuda_available=True) == "nccl"
    assert distributed.choose_backend("gloo", cuda_available=True) == "gloo"
    with pytest.raises(BiFairInputError, match="needs CUDA"):
        distributed.choose_backend("nccl", cuda_available=False)
    with pytest.raises(BiFairInputError, match="ddp_backend must be one of"):
        distributed.choose_backend("mpi", cuda_available=False)


# ----- BiFairSASRec on two processes -------------------------------------------------------------
def _train_rank(local_rank, config_dict, out_dir):
    warnings.filterwarnings("ignore", category=FutureWarning)
    from recbole.utils import init_seed

    from recbole_bifair.config import Config
    from recbole_bifair.quick_start import prepare_run

    config = Config(model="BiFairSASRec", dataset="tiny", config_dict={**config_dict, "local_rank": local_rank})
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, valid_data, test_data, model, trainer = prepare_run(config)
    trainer.fit(train_data, valid_data, saved=True)
    trained = {
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "balancer_weights": {level: b.weights() for level, b in trainer.training_step.balancers().items()},
        "valid_rows": len(valid_data.sampler),
        "test_padding": distributed.padding_rows(test_data),
    }
    trained["test_result"] = dict(trainer.evaluate(test_data, load_best_model=True))
    trained["checkpoint"] = trainer.saved_model_file
    torch.save(trained, os.path.join(out_dir, f"rank{local_rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """BiFairSASRec trained for 2 epochs by 2 gloo processes; what each rank held."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    # 67 users: DistributedSampler repeats one on rank 1, which the evaluation must not count
    config_dict = tiny_config(
        tmp_path, epochs=2, outer_every=1, eval_step=1, valid_metric="Recall@10",
        user_inter_num_interval="[15,inf)", **_group_settings())
    mp.spawn(_train_rank, args=(config_dict, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return tmp_path, ranks


@pytest.mark.slow
def test_both_ranks_hold_the_same_e_projector_backbone_and_group_weights(two_rank_run):
    _, (rank0, rank1) = two_rank_run
    assert rank0["state_dict"].keys() == rank1["state_dict"].keys()
    for name, value in rank0["state_dict"].items():
        assert torch.equal(value, rank1["state_dict"][name]), name
    assert set(rank0["balancer_weights"]) == {"inner", "outer"}
    for level, weights in rank0["balancer_weights"].items():
        assert torch.equal(weights, rank1["balancer_weights"][level]), level
        assert not torch.allclose(weights, torch.full_like(weights, 1 / len(weights))), level
    assert rank0["valid_rows"] == rank1["valid_rows"] == 34  # each rank evaluates its share of 67 users
    assert (rank0["test_padding"], rank1["test_padding"]) == (0, 1)


@pytest.mark.slow
def test_only_rank_0_writes_and_both_name_one_checkpoint(two_rank_run):
    tmp_path, (rank0, rank1) = two_rank_run
    assert glob.glob(str(tmp_path / "saved" / "*.pth")) == [rank0["checkpoint"]] == [rank1["checkpoint"]]


@pytest.mark.slow
def test_metrics_equal_a_single_process_evaluation_of_the_checkpoint(two_rank_run):
    from recbole_bifair.quick_start import load_data_and_model
    from recbole_bifair.utils import get_trainer

    _, (rank0, rank1) = two_rank_run
    assert rank0["test_result"] == rank1["test_result"]
    config, model, _, train_data, _, test_data = load_data_and_model(rank0["checkpoint"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.eval_collector.data_collect(train_data)
    single = dict(trainer.evaluate(test_data, load_best_model=False))
    assert "ndcggap@10" in single
    assert single == rank0["test_result"]


@pytest.mark.slow
def test_launcher_runs_a_plain_recbole_model_on_two_processes(tmp_path):
    from recbole_bifair.quick_start import run

    settings = _group_settings()
    config_dict = tiny_config(tmp_path, epochs=1)
    result = run("SASRec", "tiny", config_dict=config_dict, nproc=2, port=settings["port"])
    assert set(result["test_result"]) >= {"ndcg@10", "ndcggap@10"}
    assert len(glob.glob(str(tmp_path / "saved" / "*.pth"))) == 1


def test_synced_balancer_copies_as_the_balancer_it_wraps():
    import copy

    import torch

    from recbole_bifair.distributed import SyncedBalancer
    from recbole_bifair.trainer.balancer import FixedBalancer

    copied = copy.deepcopy(SyncedBalancer(FixedBalancer(3, [1.0, 2.0, 1.0])))
    assert isinstance(copied, SyncedBalancer)
    assert torch.allclose(copied.weights(), torch.tensor([0.25, 0.5, 0.25]))
