"""The parallelism seam: the single-process strategy, DDP in a one-process group, and the rank check.

Two real processes under torchrun are in test_distributed.py.
"""

import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from gpt2es_cli.config import ModelConfig
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.loss import cross_entropy
from gpt2es_cli.model import GPT2
from gpt2es_cli.training import is_main_process
from gpt2es_cli.training import parallel as parallel_module
from gpt2es_cli.training.parallel import DDP, SingleProcess, init_parallel


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT2(ModelConfig.from_preset("tiny", vocab_size=50))


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 50, (2, 9), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]  # (B, T) inputs and targets


def gradients(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def test_is_main_process_reads_torchruns_rank(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()


def test_without_torchrun_it_is_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parallel = init_parallel("cpu")
    assert isinstance(parallel, SingleProcess) and not isinstance(parallel, DDP)
    assert (parallel.rank, parallel.world_size, parallel.is_main) == (0, 1, True)
    assert parallel.local_device(torch.device("cpu")) == torch.device("cpu")
    parallel.shutdown()


def test_several_processes_on_apple_mps_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="not supported on Apple MPS"):
        init_parallel("mps")


def test_single_process_is_the_plain_model(model, batch):
    x, y = batch
    parallel = SingleProcess()
    assert parallel.wrap(model) is model
    with parallel.gradient_sync(False):
        cross_entropy(model(x), y).backward()
    expected = torch.linalg.vector_norm(torch.stack([g.norm() for g in gradients(model).values()]))
    norm = parallel.clip_grad_norm(1e-3)
    assert norm == pytest.approx(expected.item(), rel=1e-5)
    clipped = torch.linalg.vector_norm(torch.stack([g.norm() for g in gradients(model).values()]))
    assert clipped.item() == pytest.approx(1e-3, rel=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(parallel.eval_loss(x, y), cross_entropy(model(x), y, reduction="sum"))
    values = torch.tensor([1.0, 2.0])
    assert parallel.all_reduce_sum(values) is values and parallel.all_gather({"a": 1}) == [{"a": 1}]
    parallel.barrier()
    assert parallel.model_state_dict().keys() == model.state_dict().keys()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.step()
    state = parallel.optimizer_state_dict(optimizer)
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    parallel.load_optimizer_state_dict(fresh, state)
    assert fresh.state_dict()["state"].keys() == state["state"].keys()


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of one process (no torchrun): DDP runs, every collective is trivial."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_wraps_from_outside_and_keeps_the_full_model(one_process_group, model, batch, recwarn):
    x, y = batch
    reference = GPT2(model.config)
    reference.load_state_dict(model.state_dict())
    parallel = DDP(rank=0, world_size=1, local_rank=0)
    wrapped = parallel.wrap(model)
    assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) and wrapped.module is model
    assert not [w for w in recwarn if issubclass(w.category, (DeprecationWarning, FutureWarning))]

    # Accumulation: two micro-steps, gradients synchronised on the last only; same as one process.
    for sync, half in ((False, slice(0, 1)), (True, slice(1, 2))):
        with parallel.gradient_sync(sync):
            assert wrapped.require_backward_grad_sync is sync
            (cross_entropy(wrapped(x[half]), y[half]) / 2).backward()
    for half in (slice(0, 1), slice(1, 2)):
        (cross_entropy(reference(x[half]), y[half]) / 2).backward()
    torch.testing.assert_close(gradients(model), gradients(reference))
    alone = SingleProcess()
    alone.wrap(reference)
    assert parallel.clip_grad_norm(float("inf")) == pytest.approx(alone.clip_grad_norm(float("inf")), rel=1e-6)

    assert parallel.model_state_dict().keys() == reference.state_dict().keys()  # no "module." prefix
    assert parallel.all_reduce_sum(torch.tensor([3.0])).item() == 3.0
    assert parallel.all_gather({"rank": 0}) == [{"rank": 0}]
    parallel.barrier()
    parallel.shutdown()
    assert not dist.is_initialized()


def test_the_loop_does_not_know_how_it_is_parallelised():
    """Habit 13: DDP (and later FSDP) live in parallel.py; the loop only holds a Parallel."""
    loop = Path(parallel_module.__file__).with_name("loop.py")
    tree = ast.parse(loop.read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("torch.distributed")}
    source = loop.read_text(encoding="utf-8")
    for word in ("DistributedDataParallel", "no_sync", "ddp", "is_initialized"):
        assert word not in source, word


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_fsdp_in_a_one_process_group_shards_and_steps_like_the_plain_model(one_process_group, model, batch):
    from torch.distributed.tensor import DTensor

    from gpt2es_cli.training.parallel import FSDP

    x, y = batch
    reference = GPT2(model.config)
    reference.load_state_dict(model.state_dict())
    parallel = FSDP(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert parallel.sharded and parallel.place(model, torch.device("cpu")) is model
    wrapped = parallel.wrap(model)
    assert isinstance(model.wte.weight, DTensor) and model.lm_head.weight is model.wte.weight  # tied, one group
    with parallel.evaluating(), torch.no_grad():  # before any training pass, and forward passes without gathers
        torch.testing.assert_close(parallel.eval_loss(x, y), reference(x, targets=y, reduction="sum"))
        torch.testing.assert_close(model(x[:1]), reference(x[:1]))
    for sync, half in ((False, slice(0, 1)), (True, slice(1, 2))):
        with parallel.gradient_sync(sync):
            (cross_entropy(wrapped(x[half]), y[half]) / 2).backward()
        (cross_entropy(reference(x[half]), y[half]) / 2).backward()
    alone = SingleProcess()
    alone.wrap(reference)
    assert parallel.clip_grad_norm(1e-3) == pytest.approx(alone.clip_grad_norm(1e-3), rel=1e-5)
    sharded = {k: p.grad.full_tensor() for k, p in model.named_parameters()}
    torch.testing.assert_close(sharded, gradients(reference))  # accumulated and clipped alike
    full = parallel.model_state_dict(full=True)
    assert full.keys() == reference.state_dict().keys() and not any(isinstance(v, DTensor) for v in full.values())
    assert all(isinstance(v, DTensor) for v in parallel.model_state_dict().values())
    parallel.shutdown()
