"""``orch server``: run the queue server in this process (the first queue call starts it as
a Ray Job by itself; an admin runs it by hand or under a supervisor)."""

from __future__ import annotations

from orchestrator.address import ADDRESS_HELP


def add_command(sub) -> None:
    """``orch server``'s parser."""
    _add_server(sub)


def _add_server(sub) -> None:
    server = sub.add_parser(
        "server", help="run the queue server (started automatically on first use)"
    )
    server.add_argument("--state-dir", default=None, help="default: $ORCH_HOME/queue")
    server.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    server.add_argument("--ray-address", default=None, help=ADDRESS_HELP.format(default="auto"))
    server.add_argument(
        "--aging-per-minute",
        type=float,
        default=1.0,
        help="priority points a queued job gains per minute waited (default 1)",
    )
    server.add_argument(
        "--no-preemption", action="store_true", help="never stop running jobs for others"
    )
    server.add_argument("--poll-s", type=float, default=1.0, help="scheduler pass interval")
    server.add_argument(
        "--registry-role",
        choices=("admin", "member"),
        default="admin",
        help="the least role that may promote, roll back and deploy models through the "
        "server (a member only its team's <team>-... models; default admin)",
    )
    server.add_argument(
        "--non-preemptible-role",
        choices=("admin", "member"),
        default="admin",
        help="the least role whose jobs may say scheduling.preemptible: false (default admin)",
    )
    server.add_argument(
        "--max-spec-bytes",
        type=_spec_bytes,
        default=2**20,
        help="the largest spec a submit may carry, in bytes (default 1048576 = 1 MiB)",
    )


def _spec_bytes(text: str) -> int:
    """``--max-spec-bytes``: a whole number of bytes, at least 1024."""
    import argparse

    if not text.isdigit() or int(text) < 1024:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes >= 1024")
    return int(text)


def cmd_server(args) -> int:
    from pathlib import Path

    from orchestrator.queue_client import queue_dir
    from orchestrator.scheduling.access import AccessConfig
    from orchestrator.scheduling.policy import PolicyConfig
    from orchestrator.scheduling.server import serve_forever

    return serve_forever(
        Path(args.state_dir) if args.state_dir else queue_dir(),
        host=args.host,
        port=args.port,
        ray_address=args.ray_address,
        policy=PolicyConfig(
            aging_per_minute=args.aging_per_minute, preemption=not args.no_preemption
        ),
        poll_s=args.poll_s,
        access=AccessConfig(
            registry_role=args.registry_role,
            non_preemptible_role=args.non_preemptible_role,
            max_spec_bytes=args.max_spec_bytes,
        ),
    )


COMMANDS = {"server": cmd_server}
