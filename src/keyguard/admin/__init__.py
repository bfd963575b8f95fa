"""The admin server: a JSON API over the management core, behind admin tokens.

``auth`` (tokens: create, list, revoke, verify) imports no web framework, so that the
CLI's ``keyguard admin tokens …`` stays light; ``app`` builds the ASGI application
(FastAPI on uvicorn), ``api`` holds its routes and ``problems`` turns keyguard's errors
into ``application/problem+json``.
"""
