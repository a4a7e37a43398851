"""REST service: FastAPI app (`create_app`), one model worker, ingestion jobs, Prometheus metrics."""
