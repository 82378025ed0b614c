"""The training step reads nothing back from the device, and the batch's values are checked on
the CPU before it moves (where the model no longer checks them)."""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from models import build_model
from training.config import PretrainConfig, TrainSection
from training.loop import (
    bf16_runs_on,
    check_batch,
    check_precision,
    lr_at,
    make_optimizer,
    to_device,
    train_step,
    use_allotted_cpus,
)


class DeviceReads(TorchDispatchMode):
    """Records every `aten._local_scalar_dense`: the op behind `.item()`, `bool(tensor)`,
    `int(tensor)` and `float(tensor)`, which on a GPU waits for the device to finish."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        self.cpu_only_depth = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not self.cpu_only_depth:
            self.reads.append("".join(traceback.format_stack(limit=8)[:-1]))
        return func(*args, **(kwargs or {}))


class CpuOnlyChecks(TorchFunctionMode):
    """`F.one_hot` checks its class values with `.item()` on CPU tensors only; on CUDA it leaves
    that to scatter's device-side assert (aten/src/ATen/native/Onehot.cpp): no read there."""

    def __init__(self, reads: DeviceReads):
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is not torch.nn.functional.one_hot:
            return func(*args, **(kwargs or {}))
        self.reads.cpu_only_depth += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.reads.cpu_only_depth -= 1


def clip_batch(batch_size: int = 2, size: int = 64) -> dict:
    """A batch as the DataLoader gives it: 3-frame clips, 2 objects each."""
    labels = torch.randint(0, 3, (batch_size, 3, size, size))
    return {
        "frames": torch.rand(batch_size, 3, 3, size, size),
        "labels": labels,
        "num_objects": torch.full((batch_size,), 2),
        "key": [f"clip-{index}" for index in range(batch_size)],
    }


@pytest.mark.parametrize("name", ["gc", "gvos_scm", "stm"])
def test_a_training_step_reads_nothing_back_from_the_device(name, make_tiny_config):
    config = make_tiny_config(PretrainConfig, "pretrain_tiny.yaml", f"model.name={name}")
    torch.manual_seed(0)
    model = build_model(name, size="tiny").train()
    optimizer = make_optimizer(config, model)
    batch = clip_batch()
    num_objects = check_batch(batch)
    frames, labels = to_device(batch, torch.device("cpu"))

    reads = DeviceReads()
    with reads, CpuOnlyChecks(reads):
        for _ in range(2):  # the first step also creates Adam's state
            loss = train_step(
                model, model, optimizer, frames, labels, num_objects, grad_clip_norm=1.0
            )
    assert reads.reads == [], f"{len(reads.reads)} reads, the first from:\n{reads.reads[0]}"
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0


def test_bf16_runs_where_the_device_has_kernels_and_is_refused_in_one_line_elsewhere(
    make_tiny_config,
):
    config = make_tiny_config(PretrainConfig, "pretrain_tiny.yaml", "compute.precision=bf16")
    with pytest.raises(ValueError, match=r"^compute.precision = bf16: this worker's meta has no"):
        check_precision(config.compute.precision, torch.device("meta"))
    check_precision("fp32", torch.device("meta"))  # fp32 runs anywhere
    if not bf16_runs_on(torch.device("cpu")):
        pytest.skip("this CPU has no bf16 kernels (AVX-512 BF16 or AMX)")
    check_precision(config.compute.precision, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model("gc", size="tiny").train()
    optimizer = make_optimizer(config, model)
    frames, labels = to_device(clip_batch(), torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_step(model, model, optimizer, frames, labels, 2, bf16=True, grad_clip_norm=1.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_a_cpu_worker_computes_on_as_many_threads_as_it_was_given_cpus(make_tiny_config):
    threads = torch.get_num_threads()
    try:
        for cpus in (1, 2):
            config = make_tiny_config(
                PretrainConfig, "pretrain_tiny.yaml", f"compute.cpus_per_worker={cpus}"
            )
            use_allotted_cpus(config, torch.device("cpu"))
            assert torch.get_num_threads() == cpus
        torch.set_num_threads(3)
        use_allotted_cpus(config, torch.device("meta"))  # not a CPU: left as it is
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)


def with_clip_1(name: str, change) -> dict:
    batch = clip_batch()
    batch[name][1] = change(batch[name][1])
    return batch


BAD_BATCHES = {
    "0..255 frames": (
        with_clip_1("frames", lambda frames: frames * 255),
        r"clip clip-1: frames must be finite and in \[0, 1\], got values in \[[\d.]+, 25\d\]",
    ),
    "NaN frames": (
        with_clip_1("frames", lambda frames: frames.masked_fill(frames > 0.5, float("nan"))),
        r"clip clip-1: frames must be finite and in \[0, 1\], got values in \[nan",
    ),
    "id above num_objects": (
        with_clip_1("labels", lambda labels: labels * 2),
        r"clip clip-1: labels must be in 0..2 \(num_objects\), got values in 0..4",
    ),
    "negative id": (
        with_clip_1("labels", lambda labels: labels - 1),
        r"clip clip-1: labels must be in 0..2 \(num_objects\), got values in -1..1",
    ),
}


@pytest.mark.parametrize("case", BAD_BATCHES)
def test_a_bad_batch_is_named_in_one_line_before_it_moves(case):
    batch, message = BAD_BATCHES[case]
    with pytest.raises(ValueError, match=message) as error:
        check_batch(batch)
    assert "\n" not in str(error.value)


def test_a_good_batch_gives_its_object_count():
    batch = clip_batch()
    batch["num_objects"][0] = 1
    batch["labels"][0] = batch["labels"][0].clamp(max=1)
    assert check_batch(batch) == 2


def test_the_cosine_schedule_warms_up_decays_to_its_floor_and_resumes_where_it_was():
    train = TrainSection(lr=1e-3, lr_schedule="cosine", warmup_steps=10, final_lr_fraction=0.1)
    lrs = [lr_at(train, step, total_steps=111) for step in range(111)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # warm-up
    assert lrs[10] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)  # lr -> floor
    assert lrs[60] == pytest.approx(5.5e-4)  # half way down the cosine
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    # a pure function of the step: a run restored at step 60 continues the same curve
    assert lr_at(train, 60, 111) == lrs[60]
    constant = train.model_copy(update={"lr_schedule": "constant", "warmup_steps": 0})
    assert {lr_at(constant, step, 110) for step in range(110)} == {1e-3}
