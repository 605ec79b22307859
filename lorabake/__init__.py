"""The `lorabake` command: composes the API, the worker and the engine (see lorabake.cli)."""
