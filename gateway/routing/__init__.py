"""Routing: client model names to tiers (by name or by policy) and tiers to engines.

Modules: ``router`` (the route stage), ``features`` (what a policy sees),
``policies`` (tier choice, registry, chains), ``learned`` (a small logistic policy),
``balancer`` (replica order), ``rollout`` (canary, sticky A/B, which requests to
shadow), ``pool`` (per-engine caps and wait queues), ``health`` (breakers, retry
budget), ``monitor`` (background health checks and vLLM metrics).
"""

from gateway.routing.features import Features, Policy
from gateway.routing.policies import REGISTRY, build_policy
from gateway.routing.router import RouteDecision, Router

__all__ = ["REGISTRY", "Features", "Policy", "RouteDecision", "Router", "build_policy"]
