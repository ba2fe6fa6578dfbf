"""``make audit``: known vulnerabilities in the installed environment, through pip-audit.

pip-audit asks a vulnerability service on the internet (PyPI's JSON API, or OSV). Where it
cannot be reached (CI machines reach only package registries, and a registry mirror may
serve no JSON API, so every package comes back "not found"), nothing was audited: this
says so in one line and passes, rather than print "no known vulnerabilities" for a check
that did not run. A vulnerability found fails the target with each one listed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PIP_AUDIT = Path(sys.executable).with_name("pip-audit")


def main() -> int:
    try:
        done = subprocess.run(
            [str(PIP_AUDIT), "--progress-spinner", "off", "--format", "json"],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        print("pip-audit: the vulnerability service did not answer in 10 minutes; skipped")
        return 0
    try:
        report = json.loads(done.stdout)
    except ValueError:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"pip-audit: the vulnerability service could not be reached ({last[:160]}); skipped")
        return 0
    packages = report.get("dependencies", [])
    audited = [p for p in packages if "skip_reason" not in p]
    if not audited:
        print(f"pip-audit: the vulnerability service knew none of the {len(packages)} installed "
              "packages (a registry without its JSON API?); nothing audited, skipped")  # fmt: skip
        return 0
    found = [(p["name"], p["version"], v["id"]) for p in audited for v in p.get("vulns", [])]
    for name, version, vuln in found:
        print(f"pip-audit: {name} {version}: {vuln}")
    print(f"pip-audit: {len(found)} known vulnerabilities in {len(audited)} audited packages "
          f"({len(packages) - len(audited)} not audited)")  # fmt: skip
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
