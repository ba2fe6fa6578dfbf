"""A job as the queue keeps it: the SDK's, the CLI's and the server's one typed view."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

JobState = Literal[
    "queued", "starting", "running", "preempting", "cancelling", "succeeded", "failed", "cancelled"
]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE: frozenset[str] = frozenset({"starting", "running", "preempting", "cancelling"})


class Transition(BaseModel):
    at: float
    state: JobState
    reason: str = ""


class JobInfo(BaseModel):
    """One submitted pipeline and everything the queue knows about it."""

    id: str = Field(description="Queue id, e.g. job-000042.")
    seq: int = Field(0, description="Submission order (FIFO within a priority).")
    name: str = Field(description="--name, else the pipeline's name.")
    pipeline: str = Field(description="The spec's name.")
    queue: str = "default"
    owner: str = Field("admin", description="Who submitted it (jobs from before users: admin).")
    team: str = Field("admins", description="The submitter's team.")
    priority: int = Field(description="low=0, normal=50, high=100, or the integer given.")
    preemptible: bool = True
    state: JobState = "queued"
    reason: str = Field("", description="Why it waits, why it stopped, or what failed.")
    demand: dict[str, float] = Field(description="Resources held at once while it runs.")
    bundle: dict[str, float] = Field(default_factory=dict, description="Largest single worker.")
    concurrent_trials: int | None = Field(None, description="Tuning jobs: trials at once.")
    spec_path: str = Field(description="The file submitted (the text is kept: spec_text).")
    spec_text: str = ""
    cwd: str = Field(description="Working directory the job runs in (relative data paths).")
    env: dict[str, str] = Field(default_factory=dict, description="Submitter's ORCH_HOME etc.")
    idempotency_key: str | None = None
    submitted_at: float = Field(default_factory=time.time)
    enqueued_at: float = Field(
        default_factory=time.time, description="Start of the current wait (aging counts from it)."
    )
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = Field(0, description="Ray jobs started for it (preemption and resume add one).")
    preemptions: int = 0
    submission_id: str | None = Field(None, description="The current attempt's Ray job.")
    submission_ids: list[str] = Field(default_factory=list, description="Every attempt's Ray job.")
    run_name: str = Field("", description="Stable training/study name: attempts resume it.")
    retry_of: str | None = None
    result: dict | None = Field(None, description="The pipeline's RunResult (orch run --json).")
    history: list[Transition] = Field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def moved(self, state: JobState, reason: str = "", at: float | None = None) -> None:
        self.state = state
        self.reason = reason
        self.history.append(Transition(at=at or time.time(), state=state, reason=reason))
