"""``python -m orchestrator ...`` is the ``orch`` CLI (what `ray job submit` runs)."""

from orchestrator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
