"""The request path, one stage per module: admission → routing → forward → metering.

:mod:`pipeline` holds the order and the one lifecycle that unary and streaming
requests share; the other modules are the stages and what they produce.
"""
