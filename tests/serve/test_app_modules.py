"""A pipeline's application and the /v2 router live in their own modules; `serve deploy`
configs emitted by earlier releases name `serve.app:build_v2_app`, which still resolves."""

from __future__ import annotations

import importlib


def test_import_paths_of_emitted_configs_resolve():
    from ray import serve

    from serve.v2 import V2Router, build_v2_app

    assert importlib.import_module("serve.app").build_v2_app is build_v2_app
    assert isinstance(build_v2_app({"models": {"iris-classifier": "iris"}}), serve.Application)
    assert V2Router.name == "V2Router"  # the deployment keeps its name
