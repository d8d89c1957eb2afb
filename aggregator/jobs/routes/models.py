"""A job's model: its weights and its model card, from the model registry."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from paroma.problems import Problem

from ..deps import service, visible_job
from ..http_models import ModelCardOut
from ..service import JobService
from ..store import Job

router = APIRouter(prefix="/api/jobs/{job_id}", tags=["models"])


def _model_id(job: Job) -> str:
    if not job.model_id:
        detail = (
            f"the job is {job.state}; a model is registered when it completes"
            if job.state != "completed"
            else "the job completed without a registered model"
        )
        raise Problem(409, "No model yet", detail)
    return job.model_id


@router.get(
    "/model",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the weights (.npz)"}},
)
def model(job: Job = Depends(visible_job), svc: JobService = Depends(service)) -> Response:
    """The model's weights as an uncompressed .npz (checked against the registry's sha256; a
    retired model cannot be pulled)."""
    from aggregator.registry import RegistryError

    model_id = _model_id(job)
    try:
        _, registered = svc.registry.pull(model_id)
        data = svc.registry.weights_path(model_id).read_bytes()
    except RegistryError as exc:
        raise Problem(409, "Model not available", str(exc)) from exc
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{model_id}.npz"',
            "X-Model-Id": model_id,
            "X-Weights-Sha256": registered.weights_sha256,
        },
    )


@router.get("/model-card", response_model=ModelCardOut)
def model_card(job: Job = Depends(visible_job), svc: JobService = Depends(service)) -> ModelCardOut:
    from aggregator.registry import RegistryError

    model_id = _model_id(job)
    try:
        registered = svc.registry.get(model_id)
        markdown, card = svc.registry.model_card(model_id)
    except RegistryError as exc:
        raise Problem(409, "Model card not available", str(exc)) from exc
    return ModelCardOut(
        model_id=model_id,
        state=registered.state,
        weights_sha256=registered.weights_sha256,
        markdown=markdown,
        card=card,
    )
