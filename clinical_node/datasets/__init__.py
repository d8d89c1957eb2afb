"""Data sets shipped with the platform and their converters to FHIR R4."""
