"""Moved to :mod:`tests.support.ledger`; kept so existing imports still work."""

from tests.support.ledger import T0, make_record, records

__all__ = ["T0", "make_record", "records"]
