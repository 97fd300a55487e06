"""Makes the real-engine fixtures (``real_gateway``) visible to tests/routing.

They live in tests/real/conftest.py; pytest only shares conftest fixtures with the
conftest's own folder, so this re-exports them. If they move to tests/conftest.py,
the import below finds nothing to shadow and this file can go.
"""

from __future__ import annotations

import contextlib

with contextlib.suppress(ImportError):
    from tests.real.conftest import real_engines, real_gateway, real_running  # noqa: F401
