"""Online serving: the funnel behind an HTTP service (FastAPI on uvicorn).

- ``app``: ``create_app(funnel)``, the routes, their validation and errors
- ``server``: ``serve(run, index, ranker, ...)``, behind ``recfunnel serve``
- ``resolve``: a model from a local folder or an MLflow URI (``runs:/``, ``models:/``)
- ``process``: a server in a child process, for tests and the benchmark
- ``schema``, ``middleware``, ``metrics``: request bodies, body limits, Prometheus text
"""
