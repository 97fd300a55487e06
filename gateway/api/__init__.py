"""Thin HTTP routers: each route reads the request and hands it to a service."""
