"""Serving the pull endpoint: the Prometheus reader, exposition, the HTTP server, WSGI/ASGI apps."""
