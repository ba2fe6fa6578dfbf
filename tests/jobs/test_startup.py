"""What a training pays before its first step: the DeepSpeed imports we skip stay skipped.

These reach into DeepSpeed's module layout on purpose (jobs/worker.py says why); they fail
on the DeepSpeed upgrade that moves what they rely on, before a slow start-up comes back.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

from jobs.worker import MUON_MODULES

REPO = Path(__file__).resolve().parents[2]


def test_the_muon_modules_we_stand_in_for_are_the_ones_deepspeed_imports():
    import importlib.util

    import deepspeed.runtime.zero.stage_1_and_2 as zero_1_and_2
    import deepspeed.runtime.zero.utils as zero_utils

    for module_name, attribute in MUON_MODULES.items():
        assert importlib.util.find_spec(module_name) is not None, module_name
        assert f"from {module_name} import {attribute}" in inspect.getsource(zero_1_and_2)
    checked = inspect.getsource(zero_utils.is_zero_supported_optimizer)
    assert "from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam" in checked


def test_zero_1_2_3_and_bf16_engines_step_without_importing_muon():
    # (bf16 at ZeRO-0 is autocast over an fp32 engine: jobs.worker.autocast_dtype)
    """In a fresh process, as a worker starts: the local runner's 1-rank group."""
    script = textwrap.dedent("""\
        import sys
        import torch
        from jobs.local import single_process_group
        from jobs.schedule import build_optimizer
        from jobs.spec import TrainSpec
        from jobs.worker import (
            MUON_MODULES, deepspeed_config, import_deepspeed, select_accelerator,
            skip_muon_kernels, skip_shared_memory_comm_op,
        )

        select_accelerator()
        deepspeed = import_deepspeed()
        skip_shared_memory_comm_op()
        skip_muon_kernels()
        single_process_group(torch.device("cpu"))
        deepspeed.init_distributed(dist_backend="gloo")
        for stage, precision in ((1, "fp32"), (2, "fp32"), (3, "fp32"), (1, "bf16")):
            train = TrainSpec(
                batch_size=8, deepspeed={"zero_stage": stage, "precision": precision}
            )
            module = torch.nn.Linear(4, 3)
            engine, *_ = deepspeed.initialize(
                model=module,
                optimizer=build_optimizer(train.optimizer, module.parameters()),
                config=deepspeed_config(train),
            )
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            for _ in range(2):
                loss = engine(torch.ones(8, 4, dtype=dtype)).float().sum()
                engine.backward(loss)
                engine.step()
            # the switch jobs.worker._overlapping_reducer turns off at ZeRO-0
            assert engine.enable_backward_allreduce is True, "DeepSpeed moved its switch"
            engine.destroy()
            print("ok", stage, precision, type(engine.optimizer).__name__)
        stand_ins = [sys.modules[name].__doc__ for name in MUON_MODULES]
        assert all("stand-in" in doc for doc in stand_ins), "DeepSpeed loaded Muon"
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={"DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin"},
        cwd=str(REPO),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [line for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert steps == [
        "ok 1 fp32 DeepSpeedZeroOptimizer",
        "ok 2 fp32 DeepSpeedZeroOptimizer",
        "ok 3 fp32 DeepSpeedZeroOptimizer_Stage3",
        "ok 1 bf16 DeepSpeedZeroOptimizer",
    ]


def test_a_run_on_in_memory_splits_starts_no_ray_data_actor(ray_session):
    """jobs/ray_internals.py drops Ray Train's DatasetsCallback (it starts a DatasetManager
    process per fit) when no Ray Dataset is passed, and only then; this fails on the Ray
    upgrade that renames the method or moves the callback."""
    import ray.data
    from ray.train import ScalingConfig
    from ray.train.v2._internal.callbacks.backend_setup import BackendSetupCallback
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    from jobs.ray_internals import in_memory_data_trainer

    def kinds(datasets) -> set[type]:
        trainer = in_memory_data_trainer()(
            lambda config: None, scaling_config=ScalingConfig(num_workers=2), datasets=datasets
        )
        return {type(callback) for callback in trainer._create_default_callbacks()}

    in_memory = kinds(None)
    assert DatasetsCallback not in in_memory and BackendSetupCallback in in_memory
    streamed = kinds({"train": ray.data.from_items([{"x": 1}])})
    assert streamed == in_memory | {DatasetsCallback}


def test_a_driver_that_restarts_ray_trains_again():
    """A notebook's ray.shutdown() then ray.init(): job ids start again at 01000000 in the
    new Ray, and a hub handle kept from the old one crashed the driver in Ray's C++ (Check
    failed: Cannot find actor handle). In a fresh process: two Rays, one hub each."""
    script = textwrap.dedent("""\
        import ray
        from jobs.event_hub import event_hub
        from jobs.events import TrainingWarning

        for attempt in range(2):
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
            hub = event_hub()
            ray.get(hub.put.remote("run", TrainingWarning(f"attempt {attempt}")))
            print([e.message for e in ray.get(hub.take.remote("run"))])
            ray.shutdown()
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-2:] == ["['attempt 0']", "['attempt 1']"]
