"""Per-key and per-team quotas: reserve the worst case, then settle to the actual."""

from gateway.quotas.base import Demand, QuotaStore, RateSnapshot, Reservation, Unlimited

__all__ = ["Demand", "QuotaStore", "RateSnapshot", "Reservation", "Unlimited"]
