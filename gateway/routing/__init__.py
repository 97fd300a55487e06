"""Routing: client model names to tiers (by name or by policy) and tiers to engines."""

from gateway.routing.router import RouteDecision, Router

__all__ = ["RouteDecision", "Router"]
