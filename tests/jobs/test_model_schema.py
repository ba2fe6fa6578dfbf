"""`orch schema` documents every zoo model's params as a union keyed by `model.type`, so an
editor completes each model's own fields; a model added with `register_model` brings its
branch, nested params models included, and the YAML shape stays `{type, params}`."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from jobs import models as zoo
from orchestrator.cli import main


def _model_schema(capsys) -> dict:
    assert main(["schema"]) == 0
    return json.loads(capsys.readouterr().out)["$defs"]["ModelSpec"]


def test_each_zoo_model_documents_its_params(capsys):
    model = _model_schema(capsys)
    # the zoo and the installed example plugin (make install: pip install -e examples/plugin)
    names = ["cnn", "gated-mlp", "mlp", "residual-mlp", "transformer"]
    enum, import_path = model["properties"]["type"]["anyOf"]
    assert enum == {"enum": names} and import_path["pattern"].startswith("^")
    branches = {
        b["properties"]["type"]["const"]: b["properties"]["params"]
        for b in model["oneOf"]
        if "const" in b["properties"]["type"]
    }
    assert set(branches) == set(names)
    assert branches["residual-mlp"]["properties"]["width"]["description"]
    mlp = branches["mlp"]["properties"]
    assert mlp["hidden_sizes"]["default"] == [128, 64] or "hidden_sizes" in mlp
    assert all(
        field.get("description") for b in branches.values() for field in b["properties"].values()
    )
    assert branches["mlp"]["additionalProperties"] is False  # a typo is flagged in the editor


def test_a_registered_model_adds_its_branch_with_nested_params(capsys, monkeypatch):
    monkeypatch.setattr(zoo, "MODEL_ZOO", dict(zoo.MODEL_ZOO))

    class Block(BaseModel):
        width: int = Field(8, description="Width of the block.")

    class TinyParams(zoo.ZooParams):
        blocks: list[Block] = Field(default_factory=list, description="The blocks, in order.")

    @zoo.register_model("tiny", TinyParams)
    def tiny(params, shape):
        raise NotImplementedError

    model = _model_schema(capsys)
    (branch,) = [b for b in model["oneOf"] if b["properties"]["type"].get("const") == "tiny"]
    items = branch["properties"]["params"]["properties"]["blocks"]["items"]
    assert items["properties"]["width"]["description"] == "Width of the block."
    assert "$ref" not in json.dumps(branch)  # nested models inlined, no dangling refs
