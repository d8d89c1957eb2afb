"""The job service's HTTP API (FastAPI; OpenAPI at /docs) and the data scientists' page."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from paroma.problems import install_problem_handlers

from .routes import jobs, models, schema
from .service import JobService

STATIC = Path(__file__).with_name("static")


def create_app(service: JobService) -> FastAPI:
    app = FastAPI(
        title="PAROMA-MED job service",
        description=(
            "Submit federated training jobs, follow their admission, rounds and metrics, cancel "
            "them, and pull the resulting model with its model card. Bearer tokens with roles "
            "data-scientist (own jobs only), site-admin and operator. Errors are RFC 9457 problem "
            "details."
        ),
        version="1",
    )
    app.state.service = service
    install_problem_handlers(app)
    app.include_router(schema.router)
    app.include_router(jobs.router)
    app.include_router(models.router)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
