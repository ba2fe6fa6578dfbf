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
backward and the optimizer step; the time a phase waits on it (a collective running, the
training thread doing nothing else) is taken out of that phase and reported as
``communication``, so the phases add up to the step.
The same code runs on CUDA (the profiler then also records the GPU's kernels).
"""

from __future__ import annotations

import contextlib
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
    step_ms: float = Field(
        description="The measured step: wall time from its first phase (waiting for its "
        "batch) to the end of its optimizer step."
    )
    data_wait_ms: float = Field(description="Waiting for the next batch and moving it.")
    forward_ms: float = Field(description="The forward pass and the loss.")
    backward_ms: float = Field(description="The backward pass, communication taken out.")
    optimizer_step_ms: float = Field(description="The optimizer step, communication taken out.")
    communication_ms: float = Field(
        description="Exposed communication: a collective running while the phase did nothing "
        "else (all-reduce overlapped with backward is not counted)."
    )
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

    def __init__(self, spec, rank: int, device):
        self.spec = spec
        self.rank = rank
        self.active = spec is not None and (spec.ranks == "all" or rank == 0)
        self.step = 0  # optimizer steps done so far in this process
        self._profiler = None
        self._ended = None  # the profiler once its schedule is done, exited at close()
        self._walls: list[float] = []
        self._step_started: float | None = None  # when this step's first phase began
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

    def phase(self, name: str):
        if self._profiler is None:
            return contextlib.nullcontext()
        from torch.profiler import record_function

        if self._step_started is None:  # the step is timed from its first phase
            self._step_started = time.perf_counter()
        return record_function(f"orch.{name}")

    def step_done(self) -> None:
        if self._profiler is None:
            return
        now = time.perf_counter()
        recorded = self.spec.skip <= self.step < self.spec.skip + self.spec.steps
        if recorded and self._step_started is not None:
            self._walls.append(now - self._step_started)
        self.step += 1
        self._step_started = None
        self._profiler.step()  # may call _ready, which ends the profiler

    def epoch_done(self) -> None:
        """The epoch's batches ran out: the last look for one began no step."""
        self._step_started = None

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
    """The phases of the recorded steps from the profiler's events (times in us).

    Communication is the *exposed* time of collectives: while a collective runs on any
    thread (gloo's own thread, a CUDA stream's NCCL kernel, or the training thread itself)
    and the phase is not busy with another operator. Overlapped all-reduce (DDP's buckets
    during backward) thus costs nothing here, and waiting for a peer is not counted as
    backward.
    """
    collectives = _union(
        [(e.time_range.start, e.time_range.end) for e in events if _COMMUNICATION.search(e.name)]
    )
    totals = dict.fromkeys(PHASES, 0.0)
    exposed = 0.0
    for e in events:
        name = e.name.removeprefix("orch.")
        if not e.name.startswith("orch.") or name not in totals:
            continue
        span = (e.time_range.start, e.time_range.end)
        busy = _union(
            [
                (c.time_range.start, c.time_range.end)
                for c in e.cpu_children
                if not _COMMUNICATION.search(c.name)
            ]
        )
        waited = _length(_minus(_clip(collectives, span), busy))
        totals[name] += (span[1] - span[0]) - waited
        exposed += waited
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
        communication_ms=exposed / per_step,
        top_ops=ops,
    )


Span = tuple[float, float]


def _union(spans: list[Span]) -> list[Span]:
    """Sorted, disjoint spans covering the same time."""
    out: list[Span] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _clip(spans: list[Span], window: Span) -> list[Span]:
    lo, hi = window
    return [(max(s, lo), min(e, hi)) for s, e in spans if e > lo and s < hi]


def _minus(spans: list[Span], holes: list[Span]) -> list[Span]:
    """``spans`` (disjoint) with the time of ``holes`` (disjoint, sorted) taken out."""
    out: list[Span] = []
    for start, end in spans:
        cursor = start
        for h_start, h_end in holes:
            if h_end <= cursor or h_start >= end:
                continue
            if h_start > cursor:
                out.append((cursor, h_start))
            cursor = max(cursor, h_end)
        if cursor < end:
            out.append((cursor, end))
    return out


def _length(spans: list[Span]) -> float:
    return sum(end - start for start, end in spans)
