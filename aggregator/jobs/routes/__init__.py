"""One router per resource of the job service."""
