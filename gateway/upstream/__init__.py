"""The engines as seen from the gateway: one replica's record, and the transport to it.

``transport`` is the seam: the request path talks to a :class:`Transport`, implemented
over aiohttp for real engines (``client``) and in memory for tests (``mock``).
"""
