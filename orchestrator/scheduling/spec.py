"""The spec's ``scheduling`` section: where a submitted pipeline waits and how urgent it is."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

PRIORITY_NAMES: dict[str, int] = {"low": 0, "normal": 50, "high": 100}


def priority_value(priority: str | int) -> int:
    """low=0, normal=50, high=100, or the integer itself (higher runs first).

    Raises:
        ValueError: naming the value and the valid ones.
    """
    if isinstance(priority, bool):
        raise ValueError(f"priority {priority!r}: use low, normal, high or an integer")
    if isinstance(priority, int):
        return priority
    text = str(priority).strip().lower()
    if text in PRIORITY_NAMES:
        return PRIORITY_NAMES[text]
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"priority {priority!r}: use low, normal, high or an integer (higher runs first)"
        ) from None


def priority_label(value: int) -> str:
    names = {v: k for k, v in PRIORITY_NAMES.items()}
    return names.get(value, str(value))


class SchedulingSpec(BaseModel):
    """How the orchestrator's queue treats this pipeline when it is submitted."""

    model_config = ConfigDict(extra="forbid")

    priority: str | int = Field(
        "normal",
        description="low | normal | high | an integer (low=0, normal=50, high=100); higher "
        "is admitted first and may preempt lower.",
    )
    queue: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Queue name: a label to list and filter by; admission order is global.",
    )
    preemptible: bool = Field(
        True,
        description="May a higher-priority job stop this one? It is requeued and resumes from "
        "its last checkpoint.",
    )

    @field_validator("priority")
    @classmethod
    def _known_priority(cls, priority: str | int) -> str | int:
        priority_value(priority)
        return priority

    @property
    def priority_value(self) -> int:
        return priority_value(self.priority)
