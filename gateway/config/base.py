"""What every settings section shares: strict fields, and the one config error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending field."""


class Section(BaseModel):
    """A settings section: unknown keys are an error (a typo fails at start)."""

    model_config = ConfigDict(extra="forbid")
