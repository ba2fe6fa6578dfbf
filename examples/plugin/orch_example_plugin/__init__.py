"""An example orch model plugin: two models declared under the ``orch.models`` entry points."""
