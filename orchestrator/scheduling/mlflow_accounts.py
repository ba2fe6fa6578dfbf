"""MLflow accounts for the queue's users: the one module that calls MLflow's auth API.

On a cluster whose MLflow is a tracking server with accounts (``mlflow server --app-name
basic-auth``, as the shipped configs start it: ``cluster/mlflow_auth.py``), ``orch users add
alice`` also gives alice an MLflow account and ``orch users revoke alice`` deletes it. It
applies when ``MLFLOW_TRACKING_URI`` is an http(s) server and MLflow's client finds a login
for it: ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, else
``~/.mlflow/credentials`` (which the configs link, on the head, to the admin's login made at
first boot). Off such a server (a laptop, a SQLite store) nothing here runs.

- **The password is the user's orch token** (256 random bits, shown once by ``orch users
  add``): one secret per member, and revoking the user ends both.
- **What an account may do**: read every experiment, run and registered model (the server's
  ``default_permission = READ``, as ``orch ui --read-only`` and ``orch models list`` already
  show every team's), and nothing else: orch grants it nothing, and the server refuses any
  write by an account that is not an MLflow admin (``cluster.mlflow_auth.authenticate``),
  creating an experiment or a model included. Members' runs and versions are written by the
  jobs the queue starts, which log in as the admin. New experiments and models therefore
  need no grant: every account reads them as soon as they exist.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

from orchestrator.exceptions import OrchestratorError, first_line

CHECK_TIMEOUT_S = 10.0
"""How long the checks before a change wait for the server (MLflow's own client retries a
dead server for minutes)."""


class MlflowAccountsError(OrchestratorError):
    """The MLflow server cannot take the account change (down, no accounts, not an admin's
    login, a name taken); the message says which and what to do."""


class AccountChange(BaseModel):
    """What ``orch users add|revoke`` did to the user's MLflow account."""

    name: str = Field(description="The account's user name (the orch user's).")
    tracking_uri: str = Field(description="The MLflow server the account is on.")
    done: bool = Field(description="False: the change failed; ``detail`` says why.")
    detail: str = Field(description="One line for the admin: what happened, or why not.")


def tracking_server() -> str | None:
    """The MLflow tracking server orch's jobs write to, when accounts apply to it: an
    http(s) ``MLFLOW_TRACKING_URI`` with a login MLflow's client finds; None otherwise."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").rstrip("/")
    if not uri.startswith(("http://", "https://")):
        return None
    from mlflow.utils.credentials import read_mlflow_creds

    login = read_mlflow_creds()
    return uri if login.username and login.password else None


class MlflowAccounts:
    """Accounts on the MLflow server at ``tracking_uri``, changed with the login MLflow's
    client reads (an MLflow admin's)."""

    def __init__(self, tracking_uri: str):
        from mlflow.server.auth.client import AuthServiceClient

        self.tracking_uri = tracking_uri
        self._client = AuthServiceClient(tracking_uri)

    def check_admin(self) -> None:
        """Fail fast unless the server answers with accounts and takes our login as an
        admin's.

        Raises:
            MlflowAccountsError: down, no accounts, or the login refused or not an admin.
        """
        import httpx
        from mlflow.utils.credentials import read_mlflow_creds

        login = read_mlflow_creds()
        where = f"the MLflow server at {self.tracking_uri}"
        try:
            answer = httpx.get(
                f"{self.tracking_uri}/api/2.0/mlflow/users/current",
                auth=(login.username, login.password),
                timeout=CHECK_TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            raise MlflowAccountsError(f"{where} does not answer ({first_line(exc)})") from None
        if answer.status_code == 401:
            raise MlflowAccountsError(
                f"{where} refuses the login {login.username!r} (MLFLOW_TRACKING_USERNAME/"
                "MLFLOW_TRACKING_PASSWORD, else ~/.mlflow/credentials)"
            )
        if answer.status_code == 404:
            raise MlflowAccountsError(
                f"{where} has no accounts: start it with `mlflow server --app-name basic-auth` "
                "(cluster/mlflow_auth.py), or run this with MLFLOW_TRACKING_URI unset to "
                "change queue users without MLflow accounts"
            )
        if answer.status_code != 200 or not answer.json().get("user", {}).get("is_admin"):
            raise MlflowAccountsError(
                f"{where}: the login {login.username!r} is not an MLflow admin "
                f"(HTTP {answer.status_code}); use the admin's (its credentials file on the head)"
            )

    def exists(self, name: str) -> bool:
        """True when the server has an account ``name``."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_user(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise MlflowAccountsError(f"MLflow account {name!r}: {first_line(exc)}") from None
        return True

    def create(self, name: str, password: str) -> AccountChange:
        """Create account ``name`` (no grants: it reads, as every account does)."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_user(name, password)
        except MlflowException as exc:
            return self.change(name, False, f"not created: {first_line(exc)}")
        return self.change(
            name, True, "created; its password is the token above (it reads, never writes)"
        )

    def delete(self, name: str) -> AccountChange:
        """Delete account ``name``; one that is missing is already gone, and an MLflow
        admin's (which ``orch users add`` never makes) is left alone."""
        from mlflow.exceptions import MlflowException

        try:
            if self._client.get_user(name).is_admin:
                return self.change(name, False, "is an MLflow admin: not deleted by orch")
            self._client.delete_user(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return self.change(name, True, "none to delete")
            return self.change(name, False, f"not deleted: {first_line(exc)}")
        return self.change(name, True, "deleted")

    def change(self, name: str, done: bool, detail: str) -> AccountChange:
        """An ``AccountChange`` of account ``name`` whose line ends with ``detail``."""
        return AccountChange(
            name=name,
            tracking_uri=self.tracking_uri,
            done=done,
            detail=f"MLflow account {name} on {self.tracking_uri} {detail}",
        )


def accounts_for_new_user(name: str) -> MlflowAccounts | None:
    """The accounts to give new user ``name`` one on, checked before the queue changes:
    the server answers, our login is its admin's, and ``name`` is free there (taking over
    an existing account, the admin's say, is refused). None without a tracking server.

    Raises:
        MlflowAccountsError: any of those checks fails (then add no user).
    """
    uri = tracking_server()
    if uri is None:
        return None
    accounts = MlflowAccounts(uri)
    accounts.check_admin()
    if accounts.exists(name):
        raise MlflowAccountsError(
            f"the MLflow server at {uri} has an account {name!r} already; orch gives each "
            "user a new one: pick another name, or delete that account first"
        )
    return accounts


def close_account(name: str) -> AccountChange | None:
    """Delete ``name``'s MLflow account after the queue revoked the user; None without a
    tracking server. Never raises: the revocation stands whatever MLflow answers."""
    uri = tracking_server()
    if uri is None:
        return None
    accounts = MlflowAccounts(uri)
    try:
        accounts.check_admin()
    except MlflowAccountsError as exc:
        return accounts.change(name, False, f"not deleted: {exc}")
    return accounts.delete(name)
