"""The engines as seen from the gateway: one replica's record, and the transport to it.

``transport`` is the seam: the request path talks to a :class:`Transport`, implemented
over raw keep-alive HTTP/1.1 for real engines (``http`` on ``connection``), over aiohttp
as the measured baseline (``client``) and in memory for tests (``mock``).
"""
