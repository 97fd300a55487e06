"""Local and production vLLM engines for Tollgate.

- ``engines.profiles``: which engines a deployment runs, loaded from YAML.
- ``engines.prepare``: builds the engine venv and model folders once, keyed by version.
- ``engines.launcher``: starts, watches and stops the engines as background processes.
- ``engines.cli``: ``python -m engines prepare|up|down|status|logs`` (``tollgate engines``).
"""
