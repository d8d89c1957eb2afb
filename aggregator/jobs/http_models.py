"""The job service's HTTP answers (pydantic at the edge; the OpenAPI document shows them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class AdmissionOut(BaseModel):
    site_id: str
    accepted: bool
    reason: str = Field(description="the site's admission policy's answer, in words")


class JobOut(BaseModel):
    id: str
    owner: str
    name: str
    spec_sha256: str
    state: str = Field(description="queued | admission | running | completed | failed | cancelled")
    reason: str
    submitted: str
    started: str | None
    finished: str | None
    current_round: int
    completed_rounds: int
    total_rounds: int
    cancel_requested: bool
    run_id: str
    model_id: str
    participating_sites: list[str]
    admissions: list[AdmissionOut]
    rounds: list[dict[str, Any]] = Field(description="every completed round: metrics per site")


class JobSummary(BaseModel):
    id: str
    owner: str
    name: str
    state: str
    reason: str
    submitted: str
    completed_rounds: int
    total_rounds: int
    model_id: str
    participating_sites: list[str]


class LogLine(BaseModel):
    seq: int
    at: str
    message: str


class Whoami(BaseModel):
    role: str
    subject: str


class ModelCardOut(BaseModel):
    model_id: str
    state: str
    weights_sha256: str
    markdown: str
    card: dict[str, Any]
