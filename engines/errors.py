"""Errors raised by the engines package.

One hierarchy, so the CLI can turn any of them into a clear message and exit code::

    EngineError
     ├── ProfileError      a profile file is missing or invalid
     ├── PrepareError      a preparation step (install, model build) failed
     ├── LaunchError       an engine would not start, died, or timed out
     └── PlanError         a profile cannot be sized (unknown model or GPU)
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class for every error the engines package raises on purpose."""


class ProfileError(EngineError):
    """A profile could not be found, parsed or validated."""


class PrepareError(EngineError):
    """A preparation step failed; the message names the step and its log file."""


class LaunchError(EngineError):
    """An engine process could not be started or did not become ready."""


class PlanError(EngineError):
    """The memory planner lacks a fact it needs: the model's architecture or the GPU's."""
