"""``reverie serve``: an OpenAI-compatible HTTP server for reverie models (docs/serve.md).

* :mod:`reverie.serve.app` -- ``create_app(models, ServerConfig(...))``, the FastAPI app, and
  ``load_models(specs)``;
* :mod:`reverie.serve.batching` -- the bounded request queue and dynamic batcher;
* :mod:`reverie.serve.schemas` -- request bodies; :mod:`reverie.serve.metrics` -- Prometheus.

FastAPI, uvicorn and prometheus-client are imported only when a server is built, so
``import reverie`` never needs them.
"""
