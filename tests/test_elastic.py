"""--resume auto: a command re-run as it is (torchrun --max-restarts, a requeued Slurm job) starts
the run, continues it from its newest checkpoint that loads, and exits 0 once it is finished; two
torchrun "nodes" on one machine restart after a worker is killed and end with the losses of a run
that was never interrupted."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_dataset
from typer.testing import CliRunner

from gpt2es_cli.cli import app
from gpt2es_cli.config import TrainConfig
from gpt2es_cli.training import loop as loop_module
from gpt2es_cli.training import resumable_checkpoints, train
from gpt2es_cli.training.rundir import ASIDE

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

STEPS = 20
SETTINGS = dict(preset="tiny", batch_size=2, global_batch=4, max_steps=STEPS, save_interval=4, keep_last=2,
                log_interval=1, eval_interval=0, sample_tokens=0, seed=3, device="cpu", lr=3e-3)
"""One run's settings: every command below gives them all, as a restarted job does."""


def options(data, out, **changes):
    args = ["train", "--resume", "auto", "--data", str(data), "--out", str(out)]
    for key, value in {**SETTINGS, **changes}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def train_losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["type"] == "train"]


def assert_same_losses(got, want, rtol=1e-6, atol=1e-7):
    assert [s for s, _ in got] == [s for s, _ in want]
    torch.testing.assert_close([v for _, v in got], [v for _, v in want], rtol=rtol, atol=atol)


def snapshot(directory):
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_tokenizer, spanish_texts):
    return make_dataset(tmp_path_factory.mktemp("elastic") / "data", tiny_tokenizer, spanish_texts)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The run uninterrupted, in one process (2 micro-batches of 2 windows a step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("reference") / "run"
        train(TrainConfig(data=str(data), out=str(out), **SETTINGS))
    finally:
        torch.set_num_threads(threads)
    return out


def test_resumable_checkpoints_are_last_pth_then_the_copies_by_step(tmp_path):
    assert resumable_checkpoints(tmp_path / "none") == []
    for name in ("step-0000008.pth", "step-0000012.pth", "step-12000000.pth", "best.pth", "step-x.pth", "last.pth"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in resumable_checkpoints(tmp_path)] == [
        "last.pth", "step-12000000.pth", "step-0000012.pth", "step-0000008.pth"
    ]


def test_the_same_command_starts_continues_after_sigterm_and_then_has_nothing_to_do(
        data, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = loop_module._Trainer._optimizer_step

    def preempted(self):  # SIGTERM twice (Slurm's, then torchrun's forwarded one) during step 7: it completes and saves
        lr = original(self)
        if self.step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return lr

    monkeypatch.setattr(loop_module._Trainer, "_optimizer_step", preempted)
    result = runner.invoke(app, options(data, run))
    assert result.exit_code == 130, result.output
    assert "(new run)" in result.stdout and "saved" in result.stdout
    monkeypatch.setattr(loop_module._Trainer, "_optimizer_step", original)
    # What a later kill during a save would leave: the temp file of the write, the files set aside.
    (run / ".last.pth.k2j3l4.tmp").write_bytes(b"half a checkpoint")
    (run / ASIDE).mkdir()
    shutil.copy(run / "metrics.jsonl", run / ASIDE / "metrics.jsonl")

    result = runner.invoke(app, options(data, run))  # the requeued job: the settings equal the run's
    assert result.exit_code == 0, result.output
    assert "resuming at step 7" in result.stdout and "warning" not in result.stderr
    assert not (run / ".last.pth.k2j3l4.tmp").exists() and not (run / ASIDE).exists()
    assert_same_losses(train_losses(run), train_losses(reference))

    before = snapshot(run)
    result = runner.invoke(app, options(data, run))  # requeued once more: the run is finished
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"nothing to train: {run / 'last.pth'} already finished its budget")
    assert snapshot(run) == before
    result = runner.invoke(app, options(data, run, seed=4))  # a fixed setting changed is still refused
    assert result.exit_code == 1 and "cannot change --seed" in result.stderr


def test_a_damaged_last_pth_resumes_from_the_newest_copy_that_loads(data, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)  # step-0000016.pth, step-0000020.pth (last.pth's step) as separate files
    for name in ("last.pth", f"step-{STEPS:07d}.pth"):  # a truncated file, a corrupt one
        raw = (run / name).read_bytes()
        (run / name).write_bytes(raw[: len(raw) // 2] if name == "last.pth" else raw[:100] + b"\0" * (len(raw) - 100))
    result = runner.invoke(app, options(data, run))
    assert result.exit_code == 0, result.output
    assert result.stderr.count("passed over") == 2 and "the newest checkpoint that loads" in result.stderr
    assert "resuming at step 16" in result.stdout
    assert_same_losses(train_losses(run), train_losses(reference))

    (run / "last.pth").write_bytes(b"")
    for copy in run.glob("step-*.pth"):
        copy.write_bytes(b"not a checkpoint")
    before = snapshot(run)
    result = runner.invoke(app, options(data, run))  # nothing loads: refused, and nothing replaced
    assert result.exit_code == 1 and "cannot resume" in result.stderr and "and 2 older" in result.stderr
    assert snapshot(run) == before

    for path in [run / "last.pth", *run.glob("step-*.pth")]:
        path.unlink()
    (run / "best.pth").write_bytes(b"weights")  # a run killed after its first evaluation, before its first save
    before = snapshot(run)
    result = runner.invoke(app, [*options(data, run), "--force"])
    assert result.exit_code == 1 and "use one or the other" in result.stderr
    assert snapshot(run) == before
    result = runner.invoke(app, options(data, run))  # no state to continue: it starts again
    assert result.exit_code == 0, result.output
    assert "stopped before its first last.pth (" in result.stderr and "(new run)" in result.stdout
    assert_same_losses(train_losses(run), train_losses(reference))


# --- two nodes under torchrun ---------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid):
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def last_step(run_dir):
    try:
        return max((s for s, _ in train_losses(run_dir)), default=0)
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0  # not written yet, or a line being written


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finding the worker process needs /proc")
def test_two_nodes_restart_after_a_worker_is_killed_and_end_as_the_uninterrupted_run(data, reference, tmp_path):
    run, port = tmp_path / "run", free_port()
    # torchrun's own store, shared with the workers by default, keeps the keys of the killed workers' process
    # group, and the restarted ones may read those stale addresses (then fail or hang connecting): opt out.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}

    def node(name, hosts_store):  # the c10d store on node a only; everything on 127.0.0.1
        launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                  "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "elastic",
                  "--rdzv-conf", f"is_host={int(hosts_store)}", "--local-addr", "127.0.0.1", "--max-restarts", "2"]
        return subprocess.Popen([*launch, "-m", "gpt2es_cli", *options(data, run)], env=env, cwd=tmp_path,
                                stdout=(tmp_path / f"{name}.out").open("w"), stderr=(tmp_path / f"{name}.err").open("w"),
                                start_new_session=True)

    def logs():
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("[ab].*")))

    nodes = []
    try:
        nodes = [node("a", True), node("b", False)]
        deadline = time.monotonic() + 90
        while last_step(run) < 5 and time.monotonic() < deadline and all(n.poll() is None for n in nodes):
            time.sleep(0.005)
        killed_at = last_step(run)
        assert 5 <= killed_at < STEPS, logs()  # the run has saved step 4 and is still going
        workers = [pid for pid in children(nodes[1].pid) if b"gpt2es_cli" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 1, logs()
        os.kill(workers[0], signal.SIGKILL)  # node b's training process; its torchrun stays
        try:
            codes = [n.wait(timeout=90) for n in nodes]
        except subprocess.TimeoutExpired:
            pytest.fail("the restarted run did not end:\n" + logs())
        assert codes == [0, 0], logs()
    finally:
        for n in nodes:
            if n.poll() is None:
                os.killpg(n.pid, signal.SIGKILL)
                n.wait(timeout=30)
    out = (tmp_path / "a.out").read_text() + (tmp_path / "b.out").read_text()
    assert out.count("(new run)") == 1 and out.count("resuming at step") == 1, logs()  # rank 0 reports, once each
    assert_same_losses(train_losses(run), train_losses(reference), rtol=1e-5, atol=1e-6)  # 2 processes against 1
    raw = torch.load(run / "last.pth", weights_only=True)
    assert raw["training"]["step"] == STEPS and raw["training"]["world_size"] == 2

    # The finished job started again (a requeue, a restart): every process exits 0 and says so once.
    again = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "gpt2es_cli", *options(data, run)],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert again.stdout.count("nothing to train") == 1 and "error" not in again.stderr, again.stderr[-3000:]
