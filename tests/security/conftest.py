"""Fixtures for the attacks in tests/security: a queue server's API on a real socket, with
an admin (root), two teams (vision: alice; nlp: bob) each with its own data root, and a
viewer (carol). No Ray: the scheduler's view of the cluster is a fixed 4 CPUs, which is
all the boundary checks read; tests that need a real head use ``queue_head``."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import httpx
import pytest

from orchestrator.scheduling.access import AccessConfig
from orchestrator.scheduling.store import JobStore

ROWS = "a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n"


class StillRay:
    """The Ray Jobs side of the scheduler for tests of the API alone: a 4-CPU, 8 GiB
    cluster that never runs anything (submits are kept; no job ever starts)."""

    def __init__(self):
        from orchestrator.scheduling.ray_jobs import ClusterResources

        total = {"CPU": 4.0, "memory": 8.0 * 2**30}
        self.cluster = ClusterResources(total=total, available=dict(total), nodes=[total])
        self.submitted: list[str] = []
        self.undeployed: list[str] = []

    def resources(self):
        return self.cluster

    def submit(self, submission_id: str, entrypoint: str, **_) -> bool:
        self.submitted.append(submission_id)
        return True

    def status(self, submission_id: str) -> tuple[str | None, str]:
        return ("PENDING", "") if submission_id in self.submitted else (None, "")

    def stop(self, submission_id: str) -> None:
        pass

    def logs(self, submission_id: str) -> str:
        return ""

    def running(self) -> list[dict]:
        return []

    def undeploy(self, app: str) -> bool:
        self.undeployed.append(app)
        return True


@pytest.fixture
def tenancy(orch_home, tmp_path):
    """The queue's store with users and teams; ``serve()`` starts its API and returns an
    ``api`` with one httpx client per user (``api.as_("bob").post(...)``) and ``api.anon``;
    ``app()`` gives the API as an ASGI app without a socket."""
    import uvicorn

    from orchestrator.scheduling.policy import create_policy
    from orchestrator.scheduling.scheduler import Scheduler
    from orchestrator.scheduling.server import ServerInfo, _listening_socket, build_api
    from tests.helpers import wait_for

    state = orch_home / "queue"
    store = JobStore(state / "queue.db")
    ids = store.identities
    tokens = {"root": ids.add_user("root", "admins", "admin").token}
    roots = {}
    for team, person in (("vision", "alice"), ("nlp", "bob")):
        root = tmp_path / "data" / team
        root.mkdir(parents=True)
        (root / "rows.csv").write_text(ROWS)
        ids.add_team(team)
        ids.set_roots(team, [str(root)])
        roots[team] = root
        tokens[person] = ids.add_user(person, team, "member").token
    tokens["carol"] = ids.add_user("carol", "nlp", "viewer").token
    ray = StillRay()
    servers: list = []

    def app(access: AccessConfig | None = None, url: str = "http://127.0.0.1:0"):
        """The API as an ASGI app (for in-process clients), and its scheduler."""
        scheduler = Scheduler(store, ray, create_policy(), state, access=access)
        info = ServerInfo(url=url, pid=0, dashboard_url="", state_dir=str(state), started_at=0)
        return build_api(scheduler, info), scheduler

    def serve(access: AccessConfig | None = None):
        sock = _listening_socket("127.0.0.1", 0)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        api, scheduler = app(access, url)
        server = uvicorn.Server(uvicorn.Config(api, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        wait_for(lambda: server.started, 30, "the API to listen")
        clients = {
            name: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})
            for name, token in tokens.items()
        }
        servers.append((server, thread, clients))
        return SimpleNamespace(
            url=url,
            scheduler=scheduler,
            as_=clients.__getitem__,
            anon=httpx.Client(base_url=url),
        )

    yield SimpleNamespace(
        app=app,
        serve=serve,
        store=store,
        tokens=tokens,
        roots=roots,
        state=state,
        data=tmp_path / "data",
    )
    for server, thread, clients in servers:
        for client in clients.values():
            client.close()
        server.should_exit = True
        thread.join(timeout=10)
    store.close()


def submit_body(text: str, **extra) -> dict:
    """The JSON body of ``POST /jobs`` for ``text`` (what ``orch submit`` sends)."""
    return {"spec_text": text, "spec_path": "p.yaml", "cwd": "/somewhere", "env": {}, **extra}
