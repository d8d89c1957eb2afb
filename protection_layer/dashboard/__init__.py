"""The patients' consent dashboard served by the clinical node at ``/patient/``: a
patient signs in with a one-time enrolment code from the site, sees their consents in
plain language, grants, refuses or withdraws research per purpose and per data class,
answers studies' consent requests (pushed live), sees which jobs used their data, downloads
it as a FHIR Bundle and can have it erased."""

from __future__ import annotations

from .actions import Dashboard
from .router import build_dashboard_router, mount_dashboard
from .sessions import Enrolment, EnrolmentError, PatientSession, PatientSessions

__all__ = [
    "Dashboard",
    "Enrolment",
    "EnrolmentError",
    "PatientSession",
    "PatientSessions",
    "build_dashboard_router",
    "mount_dashboard",
]
