"""Routing: client model names to tiers (by name or by policy) and tiers to engines.

Modules: ``router`` (the route stage), ``policies`` (tier choice, registry, chains),
``learned`` (a small logistic policy), ``balancer`` (replica order), ``rollout`` (canary,
sticky A/B, shadow), ``pool`` (per-engine caps and wait queues), ``health`` (breakers,
retry budget), ``monitor`` (background health checks and vLLM metrics).
"""

from gateway.routing.policies import REGISTRY, Features, Policy, build_policy
from gateway.routing.router import RouteDecision, Router

__all__ = ["REGISTRY", "Features", "Policy", "RouteDecision", "Router", "build_policy"]
