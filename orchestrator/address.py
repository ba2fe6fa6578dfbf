"""Ray addresses, resolved in one place for every command that takes one.

A user names a cluster the way Ray taught them, from ``--address`` or ``RAY_ADDRESS``:

- ``auto``: the cluster ``orch cluster up`` recorded under ORCH_HOME, else the one Ray's own
  auto-detection finds on this machine;
- ``host:port``: the GCS address (``ray start --head --port``; what a Ray job's driver gets);
- ``http(s)://host:port``: the dashboard URL (what ``ray job submit`` and the Jobs SDK take).

Drivers (``orch run``, ``orch serve``) join the cluster and need the GCS address: from a
dashboard URL it is read off the dashboard's node summary. The queue commands talk to the
dashboard and the queue server and need the dashboard URL: from ``auto`` or a GCS address
it comes from Ray's Jobs SDK, which reads it from the GCS without joining as a driver.
Anything else (``ray://`` Ray Client addresses, typos) is refused in one line that names
the forms to use.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from orchestrator.exceptions import ClusterError, OrchestratorError, first_line

FORMS = (
    "'auto', the GCS address host:port (e.g. 127.0.0.1:6379), or the dashboard URL "
    "(e.g. http://127.0.0.1:8265)"
)
ADDRESS_HELP = (
    "the Ray cluster: 'auto', the GCS host:port, or the dashboard URL http://host:8265 "
    "(default: $RAY_ADDRESS when set, else {default})"
)
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$")


class AddressError(OrchestratorError):
    """An address that is not one of the forms we take (a user mistake: exit 2)."""

    exit_code = 2


class RayAddress(BaseModel):
    """A Ray address as the user gave it, checked for form (nothing contacted yet)."""

    text: str = Field(description="The address as given.")
    source: Literal["--address", "RAY_ADDRESS"] = Field(description="Where it came from.")
    kind: Literal["auto", "gcs", "dashboard"] = Field(
        description="auto = recorded or detected cluster; gcs = host:port; dashboard = URL."
    )

    def describe(self) -> str:
        return f"{self.source} {self.text!r}"


def parse_address(text: str, source: Literal["--address", "RAY_ADDRESS"]) -> RayAddress:
    """Check ``text`` against the three forms.

    Raises:
        AddressError: any other form, with the value, where it came from and the forms.
    """
    value = text.strip()
    if value == "auto":
        return RayAddress(text=value, source=source, kind="auto")
    if value.startswith("ray://"):
        raise AddressError(
            f"{source} {text!r}: Ray Client addresses (ray://) are not supported; use {FORMS}"
        )
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and _valid_host_port(parts.hostname, parts):
            if parts.path.strip("/") or parts.query:
                raise AddressError(
                    f"{source} {text!r}: a dashboard URL has no path: "
                    f"{parts.scheme}://{parts.netloc}; use {FORMS}"
                )
            # what a browser shows (http://host:8265/#/jobs) names the dashboard too
            url = f"{parts.scheme}://{parts.netloc}"
            return RayAddress(text=url, source=source, kind="dashboard")
        raise AddressError(f"{source} {text!r} is not a Ray address; use {FORMS}")
    host, sep, port = value.rpartition(":")
    if sep and _HOST.match(host or "") and port.isdigit() and 0 < int(port) < 65536:
        return RayAddress(text=value, source=source, kind="gcs")
    raise AddressError(f"{source} {text!r} is not a Ray address; use {FORMS}")


def _valid_host_port(host: str | None, parts) -> bool:
    try:
        port = parts.port
    except ValueError:
        return False
    if not host:
        return False
    name = f"[{host}]" if ":" in host else host  # urlsplit drops an IPv6 host's brackets
    return _HOST.match(name) is not None and (port is None or 0 < port < 65536)


def given_address(flag: str | None) -> RayAddress | None:
    """``--address`` when given, else ``RAY_ADDRESS`` when set, else None (the default)."""
    if flag is not None:
        return parse_address(flag, "--address")
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return parse_address(env, "RAY_ADDRESS") if env else None


def recorded_head():
    """The head ``orch cluster up`` (or the queue's embedded default) recorded under
    ORCH_HOME, if it is alive; its token settings are put in the environment."""
    from cluster.local import HEAD_FILE, LocalHead
    from orchestrator.home import orch_home

    head = LocalHead.load(orch_home() / "cluster" / HEAD_FILE)
    if head is None or not head.alive():
        return None
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN_PATH", head.token_path)
    return head


def gcs_address(address: RayAddress) -> str:
    """What ``ray.init`` takes for ``address``: "auto" or a GCS host:port.

    Raises:
        ClusterError: a dashboard that does not answer or does not say where its GCS is.
    """
    if address.kind == "gcs":
        return address.text
    if address.kind == "auto":
        head = recorded_head()
        return head.gcs_address if head is not None else "auto"
    return _gcs_from_dashboard(address)


def dashboard_url(address: RayAddress) -> str:
    """The cluster's dashboard URL for ``address``, without joining the cluster.

    Raises:
        ClusterError: no cluster answers there.
    """
    if address.kind == "dashboard":
        return address.text
    if address.kind == "auto":
        head = recorded_head()
        if head is not None:
            return head.dashboard_url
    from ray.job_submission import JobSubmissionClient

    from orchestrator.scheduling.token import auth_headers

    try:
        with _ray_address_env(address.text):  # Ray's SDK lets RAY_ADDRESS override the argument
            client = JobSubmissionClient(address.text, headers=auth_headers())
        return client.get_address().rstrip("/")
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: all say "not there"
        raise ClusterError(
            f"{address.describe()}: no Ray cluster answers there ({first_line(exc)}); start "
            f"one with `ray start --head`, or give {FORMS}"
        ) from None


@contextmanager
def _ray_address_env(value: str):
    """RAY_ADDRESS = ``value`` and no RAY_API_SERVER_ADDRESS (which outranks it) meanwhile."""
    names = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    before = {name: os.environ.get(name) for name in names}
    os.environ["RAY_ADDRESS"] = value
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)
    try:
        yield
    finally:
        for name, old in before.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _gcs_from_dashboard(address: RayAddress) -> str:
    """The GCS address a dashboard's head node was started with.

    The dashboard has no endpoint for it as such; its node summary carries each node's
    raylet command line, whose ``--gcs-address`` is the address every node joined with
    (``tests/orchestrator/test_addresses.py`` fails if a Ray upgrade drops it).
    """
    import time

    import httpx

    from orchestrator.scheduling.token import auth_headers

    deadline = time.monotonic() + 20  # a head that just started reports its nodes in ~5 s
    while True:
        try:
            reply = httpx.get(
                f"{address.text}/nodes", params={"view": "summary"}, headers=auth_headers(),
                timeout=10,
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise ClusterError(
                f"{address.describe()}: the Ray dashboard does not answer ({first_line(exc)}); "
                f"is the cluster up? Use {FORMS}"
            ) from None
        if reply.status_code in (401, 403):
            raise ClusterError(
                f"{address.describe()}: the Ray dashboard asks for Ray's token: set "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (or put it in ~/.ray/auth_token)"
            )
        try:
            reply.raise_for_status()
            summary = reply.json()["data"]["summary"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ClusterError(
                f"{address.describe()} is not a Ray dashboard ({first_line(exc)}); use {FORMS}"
            ) from None
        found = _gcs_in_summary(summary)
        if found:
            return found
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{address.describe()}: the Ray dashboard did not report its GCS address; "
                "give the GCS address host:port instead"
            )
        time.sleep(0.5)


def _gcs_in_summary(summary: list) -> str | None:
    for node in summary or []:
        for arg in node.get("cmdline") or []:
            if isinstance(arg, str) and arg.startswith("--gcs-address="):
                return arg.split("=", 1)[1]
    return None
