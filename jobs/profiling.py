"""``train.profile``: ``torch.profiler`` over chosen optimizer steps of a training run.

Why: a slow run needs a view of where its step goes. The loop marks each phase of a step
with ``record_function`` (``orch.data_wait``, ``orch.forward``, ``orch.backward``,
``orch.optimizer_step``); the profiler records ``profile.steps`` steps after ``profile.skip``
warm-up steps on the chosen ranks, and this module turns its events into three files put
in every later checkpoint (so the final one, which the driver reads, has them):

- ``trace_rank<r>.json``: the Chrome trace (Perfetto, ``chrome://tracing``, TensorBoard);
- ``ops_rank<r>.txt``: the top operators by self time (``key_averages().table``);
- ``breakdown_rank<r>.json``: a ``StepProfile``: the measured step and its phases.

Communication (all-reduce, all-gather, reduce-scatter, broadcast, barrier) happens inside
DeepSpeed's backward and step; its time on the training thread is taken out of the phase
that held it and reported as ``communication``, so the phases add up to the step.
The same code runs on CUDA (the profiler then also records the GPU's kernels).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, Field

PROFILE_DIR = "profile"
PHASES = ("data_wait", "forward", "backward", "optimizer_step")
_COMMUNICATION = re.compile(
    r"all_?reduce|all_?gather|reduce_?scatter|broadcast|barrier|all_?to_?all|"
    r"^(gloo|nccl)[:_]|^c10d::",
    re.IGNORECASE,
)


class OpTime(BaseModel):
    """One operator's share of the profiled steps."""

    name: str
    self_ms: float = Field(description="Time in the operator itself, over all profiled steps.")
    calls: int


class StepProfile(BaseModel):
    """Where one rank's optimizer step went, averaged over the profiled steps (ms)."""

    rank: int
    steps: int = Field(description="Optimizer steps recorded.")
    first_step: int = Field(description="The run's step number of the first one (1-based).")
    step_ms: float = Field(description="The measured step: wall time, data wait included.")
    data_wait_ms: float = Field(description="Waiting for the next batch and moving it.")
    forward_ms: float = Field(description="The forward pass and the loss.")
    backward_ms: float = Field(description="The backward pass, communication taken out.")
    optimizer_step_ms: float = Field(description="The optimizer step, communication taken out.")
    communication_ms: float = Field(description="Collectives on the training thread.")
    top_ops: list[OpTime] = Field(description="The operators with the most self time.")

    @property
    def phases_ms(self) -> float:
        """The phases' sum: within a few percent of ``step_ms`` (the rest is the loop's
        own Python between phases)."""
        return (
            self.data_wait_ms
            + self.forward_ms
            + self.backward_ms
            + self.optimizer_step_ms
            + self.communication_ms
        )

    def describe(self) -> str:
        """One line for the terminal."""
        parts = ", ".join(
            f"{name.replace('_ms', '').replace('_', ' ')} {getattr(self, name):.2f}"
            for name in (
                "data_wait_ms",
                "forward_ms",
                "backward_ms",
                "optimizer_step_ms",
                "communication_ms",
            )
        )
        return (
            f"step profile (rank {self.rank}, steps {self.first_step}-"
            f"{self.first_step + self.steps - 1}): {self.step_ms:.2f} ms a step = {parts} ms"
        )


def profiles_in(folder: Path) -> list[StepProfile]:
    """The step profiles a checkpoint holds (rank order); empty when it was not profiled."""
    found = sorted((folder / PROFILE_DIR).glob("breakdown_rank*.json"))
    return [StepProfile.model_validate_json(p.read_text()) for p in found]


class StepProfiler:
    """The loop's side: ``phase(name)`` around each phase, ``step_done()`` after each
    optimizer step, ``save_into(checkpoint_dir)`` at each checkpoint. Inactive (every call
    a no-op) when the run or this rank is not profiled."""

    def __init__(self, spec, rank: int, device, start_step: int = 0):
        self.spec = spec
        self.rank = rank
        self.active = spec is not None and (spec.ranks == "all" or rank == 0)
        self.step = start_step  # optimizer steps done so far in this process
        self._profiler = None
        self._ended = None  # the profiler once its schedule is done, exited at close()
        self._walls: list[float] = []
        self._step_started = time.perf_counter()
        self._out: Path | None = None
        if self.active:
            self._start(device)

    def _start(self, device) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile, schedule

        activities = [ProfilerActivity.CPU]
        if device.type == "cuda" and torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        skip = self.spec.skip
        self._profiler = profile(
            activities=activities,
            schedule=schedule(
                wait=max(skip - 1, 0), warmup=min(skip, 1), active=self.spec.steps, repeat=1
            ),
            record_shapes=self.spec.record_shapes,
            on_trace_ready=self._ready,
        )
        self._profiler.__enter__()
        self._step_started = time.perf_counter()

    def phase(self, name: str):
        if self._profiler is None:
            return contextlib.nullcontext()
        from torch.profiler import record_function

        return record_function(f"orch.{name}")

    def step_done(self) -> None:
        if self._profiler is None:
            return
        now = time.perf_counter()
        recorded = self.spec.skip <= self.step < self.spec.skip + self.spec.steps
        if recorded:
            self._walls.append(now - self._step_started)
        self.step += 1
        self._profiler.step()  # may call _ready, which ends the profiler
        self._step_started = time.perf_counter()

    def close(self) -> None:
        """Exit the profiler (at the end of the loop, whether the steps all ran or not)."""
        for profiler in (self._profiler, self._ended):
            if profiler is not None:
                profiler.__exit__(None, None, None)
        self._profiler = self._ended = None
        if self._out is not None:  # saved into the checkpoints by now
            shutil.rmtree(self._out, ignore_errors=True)
            self._out = None

    def _ready(self, profiler) -> None:
        self._ended, self._profiler = profiler, None  # the loop runs unprofiled from here
        if not self._walls:  # exited before a recorded step: nothing to say
            return
        self._out = Path(tempfile.mkdtemp(prefix="orch-profile-"))
        rank = self.rank
        profiler.export_chrome_trace(str(self._out / f"trace_rank{rank}.json"))
        on_gpu = any(e.device_type.name == "CUDA" for e in profiler.key_averages())
        sort = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
        table = profiler.key_averages().table(sort_by=sort, row_limit=25)
        (self._out / f"ops_rank{rank}.txt").write_text(table + "\n")
        breakdown = breakdown_of(profiler.events(), self._walls, rank, self.spec.skip + 1)
        (self._out / f"breakdown_rank{rank}.json").write_text(breakdown.model_dump_json(indent=2))

    def save_into(self, checkpoint_dir: Path) -> None:
        """Copy the finished profile into a checkpoint being written."""
        if self._out is not None:
            shutil.copytree(self._out, checkpoint_dir / PROFILE_DIR, dirs_exist_ok=True)


def breakdown_of(events, walls: list[float], rank: int, first_step: int) -> StepProfile:
    """The phases of the recorded steps from the profiler's events (times in us)."""
    phase_events = [e for e in events if e.name.startswith("orch.")]
    threads = {e.thread for e in phase_events}
    spans = {name: [] for name in PHASES}
    for e in phase_events:
        name = e.name.removeprefix("orch.")
        if name in spans:
            spans[name].append((e.time_range.start, e.time_range.end))
    communication = _top_level(
        [
            (e.time_range.start, e.time_range.end)
            for e in events
            if e.thread in threads and _COMMUNICATION.search(e.name)
        ]
    )
    totals = {name: sum(end - start for start, end in found) for name, found in spans.items()}
    comm_total = 0.0
    for start, end in communication:
        for name, found in spans.items():
            if any(s <= start and end <= e for s, e in found):
                totals[name] -= end - start
                comm_total += end - start
                break
    steps = max(len(walls), 1)
    ops = sorted(
        (
            OpTime(name=a.key, self_ms=a.self_cpu_time_total / 1000, calls=a.count)
            for a in events.key_averages()
            if not a.key.startswith("orch.") and not a.key.startswith("ProfilerStep")
        ),
        key=lambda op: op.self_ms,
        reverse=True,
    )[:15]
    per_step = 1000 * steps  # us over all steps -> ms a step
    return StepProfile(
        rank=rank,
        steps=len(walls),
        first_step=first_step,
        step_ms=1000 * sum(walls) / steps,
        data_wait_ms=totals["data_wait"] / per_step,
        forward_ms=totals["forward"] / per_step,
        backward_ms=totals["backward"] / per_step,
        optimizer_step_ms=totals["optimizer_step"] / per_step,
        communication_ms=comm_total / per_step,
        top_ops=ops,
    )


def _top_level(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Spans not inside another (a collective's own inner events counted once)."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
        if out and start >= out[-1][0] and end <= out[-1][1]:
            continue
        out.append((start, end))
    return out


def read_trace(path: Path) -> dict:
    """A Chrome trace file as JSON (what the tests and ``orch`` read back)."""
    return json.loads(path.read_text())
