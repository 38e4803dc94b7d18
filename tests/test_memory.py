"""Training memory: the estimate, --batch-size auto (estimated on the CPU, probed on CUDA), and
--activation-checkpointing in a training run."""

import os
from dataclasses import replace
from types import SimpleNamespace

import conftest
import pytest
import torch
import yaml
from typer.testing import CliRunner

from gpt2es_cli.cli import app
from gpt2es_cli.config import ModelConfig, TrainConfig
from gpt2es_cli.device import Precision
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.model import GPT2
from gpt2es_cli.training import StepReport, TrainStart, memory, plan_run, train
from gpt2es_cli.training.memory import (
    MAX_AUTO_BATCH,
    batch_candidates,
    choose_batch_size,
    estimate_training_memory,
    parameter_count,
    pick_parallel,
    probe_sizes,
    sharding_options,
    system_available_memory,
)

pytestmark = pytest.mark.usefixtures("one_thread")
GB = 2**30
GPT2_SMALL = ModelConfig.from_preset("gpt2")
GPT2_XL = ModelConfig.from_preset("gpt2-xl")


def estimate(config=GPT2_SMALL, seq_len=1024, batch=4, **kw):
    return estimate_training_memory(config, seq_len, batch, **kw)


# --- the estimate -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "small", "gpt2"])
def test_parameter_count_is_the_models(preset):
    config = ModelConfig.from_preset(preset, vocab_size=1000, n_layer=2)
    assert parameter_count(config)[0] == GPT2(config).num_parameters()


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
def test_estimate_grows_with_batch_and_seq_len_and_shrinks_with_checkpointing(device_type, autocast_dtype):
    kw = dict(device_type=device_type, autocast_dtype=autocast_dtype)
    totals = [estimate(batch=b, **kw).step for b in (1, 2, 4, 8)]
    assert totals == sorted(totals) and len(set(totals)) == 4
    by_len = [estimate(seq_len=t, **kw).step for t in (128, 256, 512, 1024)]
    assert by_len == sorted(by_len) and len(set(by_len)) == 4
    plain, checkpointed = estimate(**kw), estimate(activation_checkpointing=True, **kw)
    assert checkpointed.activations < 0.6 * plain.activations and checkpointed.step < plain.step
    assert checkpointed.fixed == plain.fixed


def test_estimate_parts():
    cuda = estimate(device_type="cuda", autocast_dtype=torch.bfloat16)
    params = 124_439_808  # GPT-2's well-known count, the tied head counted once
    assert parameter_count(GPT2_SMALL)[0] == params
    assert cuda.weights == cuda.gradients == 4 * params and cuda.optimizer == 8 * params
    assert cuda.rollback == 0 and cuda.autocast_copies > 0  # the rollback copy is in host memory
    fp32 = estimate(device_type="cuda")
    assert fp32.autocast_copies == 0 and fp32.activations > cuda.activations
    muon = estimate(device_type="cuda", optimizer="muon")
    assert 4 * params < muon.optimizer < 8 * params
    ddp = estimate(device_type="cuda", world_size=2)
    assert ddp.gradients == 2 * cuda.gradients  # DDP's buckets
    cpu = estimate(device_type="cpu")
    assert cpu.rollback > 12 * params and cpu.total >= cpu.between_steps


# --- sharded (FSDP) and --parallel auto ------------------------------------------------------


def test_a_sharded_step_divides_the_state_by_the_processes():
    kw = dict(device_type="cuda", autocast_dtype=torch.bfloat16, batch=1)
    params = parameter_count(GPT2_XL)[0]
    replica = estimate(GPT2_XL, world_size=2, **kw)
    sharded = {n: estimate(GPT2_XL, world_size=n, parallel="fsdp", **kw) for n in (2, 4, 8)}
    totals = [sharded[n].total for n in (2, 4, 8)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 3 and totals[0] < replica.total / 2
    for n, e in sharded.items():
        assert e.weights == e.gradients == 4 * params // n and e.optimizer == 8 * params // n
        assert e.activations == replica.activations and e.workspace == replica.workspace
        assert e.autocast_copies == 0 and e.gathered == sharded[2].gathered > 0  # what is gathered is whole
    offloaded = estimate(GPT2_XL, world_size=4, parallel="fsdp", cpu_offload=True, **kw)
    assert offloaded.weights == offloaded.gradients == offloaded.optimizer == 0
    assert offloaded.offloaded == 2 * (4 * params // 4) + 8 * params // 4 and offloaded.total < sharded[4].total
    muon = estimate(GPT2_XL, world_size=4, parallel="fsdp", optimizer="muon", **kw)
    assert muon.optimizer < sharded[4].optimizer and muon.optimizer_work > 0 and replica.optimizer_work == 0
    assert muon.step > muon.optimizer_step  # the gathered matrix is far smaller than the activations
    with pytest.raises(ConfigError, match="unknown parallel strategy 'zero3'"):
        estimate(parallel="zero3")


def test_what_a_sharded_process_gathers_is_the_models_blocks_and_root():
    config = ModelConfig.from_preset("tiny", vocab_size=1000)
    model = GPT2(config)
    block = sum(p.numel() for p in model.h[0].parameters())
    root = model.num_parameters() - config.n_layer * block
    e = estimate(config, 64, 2, device_type="cuda", autocast_dtype=torch.bfloat16, world_size=2, parallel="fsdp")
    # bf16: the root and three blocks' weights, one block's gradients (bf16, fp32, and the previous one's fp32)
    assert e.gathered == 2 * (root + 3 * block) + (2 + 2 * 4) * block


def fake_gpu(monkeypatch, gigabytes):
    """A CUDA device of that much memory, bf16 under --amp."""
    monkeypatch.setattr(memory, "select_precision", lambda *a: Precision(torch.device("cuda", 0), torch.bfloat16))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=gigabytes * GB))


def test_parallel_auto_shards_only_what_a_replica_cannot_hold(monkeypatch):
    cuda = torch.device("cuda", 0)
    xl = TrainConfig(parallel="auto", amp=True, seq_len=1024, batch_size=1)
    for device in (torch.device("cpu"), torch.device("mps")):  # never on the CPU or MPS
        assert pick_parallel(GPT2_XL, xl, 8, device) == "ddp"
    fake_gpu(monkeypatch, 24)  # a replica of gpt2-xl: ~36 GB; sharded over 2: ~16 GB
    assert pick_parallel(GPT2_XL, xl, 2, cuda) == "fsdp"
    assert pick_parallel(GPT2_XL, replace(xl, batch_size="auto"), 2, cuda) == "fsdp"  # judged at one window
    assert pick_parallel(GPT2_XL, xl, 1, cuda) == "ddp"  # one process
    assert pick_parallel(GPT2_SMALL, xl, 8, cuda) == "ddp"  # a replica fits: DDP is faster
    assert pick_parallel(GPT2_XL, replace(xl, batch_size=16), 2, cuda) == "ddp"  # neither fits
    assert sharding_options(xl, GPT2_XL, 2, cuda) == {"parallel": "fsdp", "cpu_offload": False}
    accumulating = replace(xl, global_batch=8)  # 4 passes a step, each reduce-scattering: the same share
    assert pick_parallel(GPT2_XL, accumulating, 2, cuda) == "fsdp"
    assert sharding_options(TrainConfig(parallel="ddp"), GPT2_XL, 2, cuda) == {}
    fake_gpu(monkeypatch, 8)
    assert pick_parallel(GPT2_XL, xl, 2, cuda) == "ddp"  # 16 GB of shards do not fit 8 GB...
    assert pick_parallel(GPT2_XL, TrainConfig(parallel="auto", amp=True, seq_len=1024, batch_size=1, cpu_offload=True),
                         2, cuda) == "fsdp"  # ...but offloaded to the CPU they do
    fake_gpu(monkeypatch, 80)
    assert pick_parallel(GPT2_XL, xl, 8, cuda) == "ddp"


def _saved_bytes(config, batch, seq_len, autocast_dtype, checkpointing):
    """What autograd actually keeps for the backward pass (distinct storages, weights left out)."""
    model = GPT2(config).train()
    model.activation_checkpointing = checkpointing
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(0, config.vocab_size, (batch, seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_dtype is not None):
            model(x, targets=x)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in weights)


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_activation_estimate_is_what_autograd_keeps(autocast_dtype, checkpointing):
    config = ModelConfig(vocab_size=512, n_positions=128, n_layer=4, n_head=4, n_embd=128)
    saved = _saved_bytes(config, 4, 128, autocast_dtype, checkpointing)
    e = estimate(config, 128, 4, autocast_dtype=autocast_dtype, activation_checkpointing=checkpointing)
    head_grad = 4 * config.vocab_size * config.n_embd  # saved by the fused loss; the estimate counts it as workspace
    # Under autocast the saved tensors also hold the blocks' bf16 weight copies (estimated apart;
    # the head's copy is the fused loss's own, not saved).
    blocks_copies = e.autocast_copies - 2 * config.vocab_size * config.n_embd if autocast_dtype else 0
    expected = e.activations + head_grad + (0 if checkpointing else blocks_copies)
    assert saved == pytest.approx(expected, rel=0.1)


def fake_machine(tmp_path, monkeypatch, mem_available_kb, cgroup=None):
    """/proc/meminfo and a cgroup v2 directory in tmp_path; cgroup: (memory.max, memory.current, inactive_file)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: 33554432 kB\nMemFree: 1024 kB\nMemAvailable: {mem_available_kb} kB\n")
    root = tmp_path / "cgroup"
    root.mkdir()
    if cgroup is not None:
        limit, used, cache = cgroup
        (root / "memory.max").write_text(f"{limit}\n")
        (root / "memory.current").write_text(f"{used}\n")
        (root / "memory.stat").write_text(f"anon {used - cache}\ninactive_file {cache}\nactive_file 0\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    monkeypatch.setattr(memory, "CGROUPS", ((root, "memory.max", "memory.current", "inactive_file"),))


def test_available_memory_is_memavailable_without_a_container_limit(tmp_path, monkeypatch):
    fake_machine(tmp_path, monkeypatch, 8 * 2**20)
    assert system_available_memory() == 8 * GB
    (tmp_path / "cgroup" / "memory.max").write_text("max\n")  # a cgroup without a limit
    (tmp_path / "cgroup" / "memory.current").write_text(f"{GB}\n")
    assert system_available_memory() == 8 * GB


def test_a_container_limit_caps_available_memory_counting_reclaimable_cache(tmp_path, monkeypatch):
    fake_machine(tmp_path, monkeypatch, 8 * 2**20, cgroup=(4 * GB, 3 * GB, GB // 2))
    assert system_available_memory() == 4 * GB - 3 * GB + GB // 2  # what the limit leaves, cache reclaimed
    fake_machine(tmp_path / "roomy", monkeypatch, 2 * 2**20, cgroup=(64 * GB, GB, 0))
    assert system_available_memory() == 2 * GB  # the machine has less than the limit leaves
    fake_machine(tmp_path / "full", monkeypatch, 8 * 2**20, cgroup=(GB, GB, 0))
    assert system_available_memory() == 0


def test_without_meminfo_the_free_pages_are_available(tmp_path, monkeypatch):
    fake_machine(tmp_path, monkeypatch, 1)
    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "missing")
    assert system_available_memory() == os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# --- choosing the batch size ------------------------------------------------------------------


def test_candidates_are_powers_of_two_that_divide_the_global_batch():
    assert batch_candidates(64) == [1, 2, 4, 8, 16, 32, 64]
    assert batch_candidates(20) == [1, 2, 4, 8, 16]
    assert batch_candidates(64, global_batch=48) == [1, 2, 4, 8, 16]
    assert batch_candidates(32, global_batch=64, world_size=2) == [1, 2, 4, 8, 16, 32]
    assert batch_candidates(6, global_batch=6, world_size=3) == [1, 2]


def cpu_choice(monkeypatch, available, **settings):
    monkeypatch.setattr(memory, "system_available_memory", lambda: available)
    config = TrainConfig(batch_size="auto", device="cpu", **settings)
    return choose_batch_size(config, GPT2_SMALL, 1024, train_tokens=10**9)


def test_auto_on_cpu_picks_the_largest_power_of_two_within_the_estimate(monkeypatch):
    roomy = cpu_choice(monkeypatch, 10**15)
    assert roomy.batch_size == MAX_AUTO_BATCH and roomy.limit == "cap" and roomy.method == "estimate"
    choice = cpu_choice(monkeypatch, 12 * GB)
    assert choice.batch_size in (1, 2, 4, 8, 16, 32) and choice.limit == "memory" and choice.fits
    assert choice.needed <= memory.ESTIMATE_SHARE * 12 * GB < estimate(batch=2 * choice.batch_size).total
    b = choice.batch_size
    assert choice.per_window == (estimate(batch=2 * b).step - estimate(batch=b).step) // b
    smaller = cpu_choice(monkeypatch, 8 * GB)
    assert smaller.batch_size < choice.batch_size
    checkpointed = cpu_choice(monkeypatch, 8 * GB, activation_checkpointing=True)
    assert checkpointed.batch_size > smaller.batch_size
    hopeless = cpu_choice(monkeypatch, GB)
    assert hopeless.batch_size == 1 and not hopeless.fits


def test_auto_keeps_the_global_batch_and_the_data(monkeypatch):
    divides = cpu_choice(monkeypatch, 10**15, global_batch=48)
    assert divides.batch_size == 16 and divides.limit == "global_batch"
    assert cpu_choice(monkeypatch, 10**15, global_batch=64).batch_size == 64
    assert cpu_choice(monkeypatch, 10**15, global_batch=3).batch_size == 1
    few = choose_batch_size(TrainConfig(batch_size="auto", device="cpu"), GPT2_SMALL, 1024, train_tokens=20 * 1024 + 1)
    assert few.batch_size == 16 and few.limit == "data" and few.cap == 20
    with pytest.raises(ConfigError, match="multiple of the 2 processes"):
        choose_batch_size(TrainConfig(batch_size="auto", device="cpu", global_batch=3), GPT2_SMALL, 1024, 10**9, 2)


def test_probe_backs_off_at_the_first_out_of_memory():
    tried = []

    def step(b):
        tried.append(b)
        if b > 12:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 100 * b

    assert probe_sizes([1, 2, 4, 8, 16, 32, 64], step, budget=10**9) == {1: 100, 2: 200, 4: 400, 8: 800}
    assert tried == [1, 2, 4, 8, 16]  # doubling, stopped at the first failure
    assert probe_sizes([1, 2, 4, 8, 16], step, budget=450) == {1: 100, 2: 200, 4: 400}  # headroom kept
    assert probe_sizes([16, 32], step, budget=10**9) == {}

    def cublas(b):
        raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)")

    assert probe_sizes([1, 2], cublas, budget=10**9) == {}

    def broken(b):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        probe_sizes([1], broken, budget=10**9)


def test_auto_on_cuda_takes_the_probe(monkeypatch):
    """The CUDA branch with the GPU faked: a step fits up to 8 windows."""
    seen = {}

    def fake_probe(model_config, seq_len, precision, checkpointing, held, candidates, budget):
        seen.update(seq_len=seq_len, checkpointing=checkpointing, held=held, candidates=list(candidates), budget=budget)
        return {b: GB * b for b in candidates if b <= 8}

    monkeypatch.setattr(memory, "select_precision", lambda *a: Precision(torch.device("cuda", 0), torch.bfloat16))
    monkeypatch.setattr(memory, "available_memory", lambda device: 20 * GB)
    monkeypatch.setattr(memory, "_probe_cuda", fake_probe)
    config = TrainConfig(batch_size="auto", activation_checkpointing=True, amp=True, optimizer="adamw")
    choice = choose_batch_size(config, GPT2_SMALL, 512, train_tokens=10**9)
    assert (choice.batch_size, choice.method, choice.limit, choice.needed) == (8, "probe", "memory", 8 * GB)
    assert seen["seq_len"] == 512 and seen["checkpointing"] and seen["candidates"][-1] == MAX_AUTO_BATCH
    assert seen["held"] == 8 * parameter_count(GPT2_SMALL)[0]  # AdamW's moments, made at the first step
    assert seen["budget"] == int(memory.PROBE_SHARE * 20 * GB)
    monkeypatch.setattr(memory, "_probe_cuda", lambda *a: {})
    with pytest.raises(ConfigError, match="one window of 512 tokens does not fit"):
        choose_batch_size(config, GPT2_SMALL, 512, train_tokens=10**9)


def test_auto_batch_of_a_sharded_run_is_estimated_not_probed(monkeypatch):
    """A replica probed alone may not fit where the shards do: under fsdp the estimate decides."""
    fake_gpu(monkeypatch, 24)
    monkeypatch.setattr(memory, "available_memory", lambda device: 20 * GB)
    monkeypatch.setattr(memory, "_probe_cuda", lambda *a, **k: pytest.fail("a sharded run was probed as a replica"))
    sharded = dict(device_type="cuda", autocast_dtype=torch.bfloat16, world_size=4, parallel="fsdp",
                   optimizer=TrainConfig().optimizer)
    for parallel in ("fsdp", "auto"):
        choice = choose_batch_size(TrainConfig(batch_size="auto", amp=True, parallel=parallel), GPT2_XL, 1024,
                                   train_tokens=10**9, world_size=4)
        assert choice.method == "estimate" and choice.limit == "memory" and choice.fits and choice.available == 20 * GB
        b = choice.batch_size
        assert choice.needed == estimate(GPT2_XL, batch=b, **sharded).total <= memory.ESTIMATE_SHARE * 20 * GB
        assert estimate(GPT2_XL, batch=2 * b, **sharded).total > memory.ESTIMATE_SHARE * 20 * GB


def test_a_given_batch_is_checked_against_a_sharded_runs_share(monkeypatch):
    from gpt2es_cli.training.plan import _check_batch_fits

    fake_gpu(monkeypatch, 24)
    _check_batch_fits(TrainConfig(batch_size=1, amp=True, parallel="fsdp"), GPT2_XL, 1024, world_size=2)
    with pytest.raises(ConfigError, match="needs about 3[0-9].[0-9] GB for a training step, more than the cuda:0"):
        _check_batch_fits(TrainConfig(batch_size=1, amp=True, parallel="ddp"), GPT2_XL, 1024, world_size=2)


# --- in a run ---------------------------------------------------------------------------------


def tiny_run(dataset, out, **kw) -> TrainConfig:
    return conftest.tiny_run(dataset, out, **{**dict(max_steps=6, eval_interval=0, sample_tokens=0, save_interval=0), **kw})


def test_plan_resolves_auto_before_the_accumulation(train_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "system_available_memory", lambda: 10**15)
    alone = plan_run(tiny_run(train_dataset, tmp_path / "a", batch_size="auto"))
    assert alone.config.batch_size == alone.config.global_batch and alone.accum_steps == 1
    assert alone.batch_choice is not None and alone.batch_choice.batch_size == alone.config.batch_size
    kept = plan_run(tiny_run(train_dataset, tmp_path / "b", batch_size="auto", global_batch=24))
    assert kept.config.batch_size == 8 and kept.accum_steps == 3 and kept.config.global_batch == 24
    assert plan_run(tiny_run(train_dataset, tmp_path / "c")).batch_choice is None


def test_a_run_with_activation_checkpointing_has_the_same_losses(train_dataset, tmp_path):
    def losses(checkpointing):
        events = []
        config = tiny_run(train_dataset, tmp_path / f"run-{checkpointing}", dropout=0.1,
                          activation_checkpointing=checkpointing)
        train(config, subscribers=[events.append])
        return [e.loss for e in events if isinstance(e, StepReport)]

    plain, checkpointed = losses(False), losses(True)
    assert len(plain) == 6
    assert checkpointed == pytest.approx(plain, rel=1e-5)


def test_cli_batch_size_auto_trains_and_says_what_it_chose(train_dataset, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "-d", str(train_dataset), "-o", str(run), "-p", "tiny", "--batch-size", "auto",
        "--max-steps", "2", "--eval-interval", "0", "--device", "cpu", "--activation-checkpointing",
    ])
    assert result.exit_code == 0, result.output
    assert "batch size auto: " in result.stdout and " per pass, " in result.stdout and "free" in result.stdout
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert isinstance(saved["batch_size"], int) and saved["batch_size"] == saved["global_batch"]
    assert saved["activation_checkpointing"] is True


def test_train_start_carries_the_choice(train_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "system_available_memory", lambda: 10**15)
    events = []
    train(replace(tiny_run(train_dataset, tmp_path / "run", max_steps=1), batch_size="auto"),
          subscribers=[events.append])
    start = events[0]
    assert isinstance(start, TrainStart) and start.batch_choice.batch_size == start.config.batch_size
