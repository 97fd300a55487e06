"""The cost ledger: one record per request that reached an engine."""
