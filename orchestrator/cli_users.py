"""``orch users | teams | audit``: an admin's commands on the head, parsed and printed here,
done by the SDK (``orchestrator.admin.QueueAdmin``, ``Client.admin``): on the queue's file,
whether or not the server runs, each change audited. A user mistake (unknown team, bad
name, the last admin) is one line and exit 2.
"""

from __future__ import annotations

import json
import sys
import time


def add_command(sub) -> None:
    """The parsers of ``orch users``, ``orch teams`` and ``orch audit``."""
    users = sub.add_parser("users", help="queue users and their tokens (admins, on the head)")
    users_sub = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = _common(users_sub.add_parser("add", help="create a user; prints its token once"))
    add.add_argument("name")
    add.add_argument("--team", required=True, help="the user's team (orch teams add)")
    add.add_argument("--role", default="member", help="admin | member | viewer (default member)")
    _common(users_sub.add_parser("list", help="users (never their tokens)"))
    revoke = _common(users_sub.add_parser("revoke", help="revoke a user's token now"))
    revoke.add_argument("name")
    _quota_flags(
        _common(users_sub.add_parser("set", help="set a user's own quotas, beside the team's"))
    ).add_argument("name")

    teams = sub.add_parser("teams", help="queue teams (admins, on the head)")
    teams_sub = teams.add_subparsers(dest="action", required=True, metavar="ACTION")
    _common(teams_sub.add_parser("add", help="create a team")).add_argument("name")
    _common(teams_sub.add_parser("list", help="teams, their quotas and live members"))
    quota = _quota_flags(
        _common(teams_sub.add_parser("set", help="set a team's quotas (none = no limit)"))
    )
    quota.add_argument("name")
    quota.add_argument(
        "--roots",
        default=None,
        help="comma-separated folders a member's data, checkpoints and tracking store must lie "
        "in (the first is where the team's jobs run); '' clears them",
    )

    audit = _common(sub.add_parser("audit", help="who changed what in the queue, and verify it"))
    audit.add_argument("--user", default=None, help="only this user's calls")
    audit.add_argument(
        "--since", type=float, default=None, help="only calls this many hours back or newer"
    )
    audit.add_argument(
        "--verify", action="store_true", help="check the HMAC chain; exit 1 naming a bad row"
    )


QUOTA_FLAGS = {"cpus": "cpus", "gpus": "gpus", "memory": "memory", "running": "running",
               "queued": "queued", "max_priority": "priority"}  # fmt: skip
"""argparse dest -> ``Quota`` field."""


def _quota_flags(parser):
    for flag, kind, text in (
        ("--cpus", float, "CPUs its running jobs hold at once"),
        ("--gpus", float, "GPUs its running jobs hold at once"),
        ("--memory", float, "GiB of memory its running jobs hold at once"),
        ("--running", int, "jobs running at once"),
        ("--queued", int, "jobs waiting at once (a submit beyond is refused)"),
        ("--max-priority", str, "highest priority a member may submit at (low, normal, high, N)"),
    ):
        parser.add_argument(flag, type=_limit(kind), default=..., help=f"{text}; none = no limit")
    return parser


def _limits(args) -> dict:
    """The quota flags given on the command line (``...`` = not given)."""
    return {v: getattr(args, k) for k, v in QUOTA_FLAGS.items() if getattr(args, k) is not ...}


def _limit(kind):
    """argparse type of a quota: a number, or ``none`` to lift the limit."""

    def parse(text: str):
        if text.lower() == "none":
            return None
        if kind is str:
            from orchestrator.scheduling.spec import priority_value

            return priority_value(text)
        return kind(text)

    parse.__name__ = "priority" if kind is str else kind.__name__
    return parse


def _common(parser):
    parser.add_argument("--state-dir", default=None, help="default: $ORCH_HOME/queue")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    return parser


def _admin(args):
    from orchestrator.client import Client

    return Client().admin(args.state_dir)


def cmd_users(args) -> int:
    admin = _admin(args)
    if args.action == "list":
        return _print(args, [u.model_dump() for u in admin.users()], _user_line)
    if args.action == "set":
        limits = _limits(args)
        quota = admin.set_user_quota(args.name, **limits)
        if args.json:
            return _print(args, {"name": args.name, "quota": quota.model_dump()}, str)
        print(f"{args.name}  quota: {_limits_line(quota.model_dump())}")
        return 0
    if args.action == "add":
        added = admin.add_user(args.name, args.team, args.role)
        made = added.user
        if not args.json:
            print(f"user {args.name} ({args.role}, team {args.team}); token, shown once:")
            print(made.token)
            if added.first:
                print("users are now required: every queue call needs a user's token")
        else:
            _print(args, made.model_dump() | _account_json(added.mlflow_account), _user_line)
        return _account_outcome(args, added.mlflow_account)
    revoked = admin.revoke_user(args.name)
    _print(args, revoked.user.model_dump() | _account_json(revoked.mlflow_account), _user_line)
    return _account_outcome(args, revoked.mlflow_account)


def cmd_teams(args) -> int:
    admin = _admin(args)
    if args.action == "list":
        return _print(args, [t.model_dump() for t in admin.teams()], _team_line)
    if args.action == "set":
        roots = None if args.roots is None else [r for r in args.roots.split(",") if r]
        team = admin.set_team(args.name, roots=roots, **_limits(args))
        return _print(args, team.model_dump(), _team_line)
    return _print(args, admin.add_team(args.name).model_dump(), _team_line)


def cmd_audit(args) -> int:
    admin = _admin(args)
    if args.verify:
        verdict = admin.verify_audit()
        if args.json:
            print(verdict.model_dump_json())
        else:
            print(f"audit trail whole: {verdict.rows} rows" if verdict.ok else verdict.problem)
        return 0 if verdict.ok else 1
    entries = [e.model_dump() for e in admin.audit(args.user, args.since)]
    return _print(args, entries, _audit_line)


def _account_json(account) -> dict:
    """The MLflow account's part of ``orch users add|revoke --json`` (none: no key)."""
    return {} if account is None else {"mlflow_account": account.model_dump()}


def _account_outcome(args, account) -> int:
    """Show what happened to a user's MLflow account (``AccountChange``, None off a
    tracking server with accounts; the admin SDK audited it); the exit code: 1 when the
    change failed."""
    if account is None:
        return 0
    if not account.done:
        print(f"error: {account.detail}", file=sys.stderr)
    elif not args.json:
        print(account.detail)
    return 0 if account.done else 1


def _print(args, document, line) -> int:
    if args.json:
        print(json.dumps(document))
    else:
        for item in document if isinstance(document, list) else [document]:
            print(line(item))
    return 0


def _user_line(user: dict) -> str:
    user = user.get("user", user)
    revoked = " (revoked)" if user.get("revoked_at") else ""
    return f"{user['name']}  {user['role']}  team {user['team']}  token {user['token_id']}{revoked}"


def _limits_line(quota: dict) -> str:
    unit = {"memory": " GiB"}
    shown = [f"{k} {v:g}{unit.get(k, '')}" for k, v in quota.items() if v is not None]
    return ", ".join(shown) or "none"


def _team_line(team: dict) -> str:
    roots = ", ".join(team["roots"]) or "none"
    limits = _limits_line(team["quota"])
    return f"{team['name']}  {team['members']} member(s)  quota: {limits}  roots: {roots}"


def _audit_line(entry: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["at"]))
    return (
        f"{entry['seq']:>5}  {when}  {entry['user']} ({entry['team']}) from {entry['address']}: "
        f"{entry['action']} {entry['target']} -> {entry['outcome']}"
    )


COMMANDS = {"users": cmd_users, "teams": cmd_teams, "audit": cmd_audit}
