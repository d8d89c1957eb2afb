"""What can go wrong in the secure path engine, each error naming the thing that is wrong.

The HTTP layer maps these onto RFC 9457 problem details (``service.py``) and the CLI onto one
line and a non-zero exit; the engine raises them before it changes any state.
"""

from __future__ import annotations


class PceError(Exception):
    """Base of the engine's errors; the message is meant for the operator as is."""


class TopologyError(PceError):
    """A topology file or definition is malformed (names the file, field and value)."""


class VulnerabilityError(PceError):
    """A CVE record is malformed: bad id, malformed CVSS v3 vector, score that disagrees with it."""


class UnknownCveError(PceError):
    """No source at hand (local NVD files, cache, NVD API when online) knows this CVE."""


class UnscoredCveError(VulnerabilityError):
    """The CVE is known but has no CVSS v3.x metric, so it has no place in the security index."""


class UnknownNodeError(PceError):
    """A node id that the topology does not hold."""


class UnknownLinkError(PceError):
    """A link id that the topology does not hold."""


class UnknownPathError(PceError):
    """No installed path has this name."""


class UnknownExposureError(PceError):
    """The node does not carry this CVE."""


class PathExistsError(PceError):
    """An installed path already has this name."""


class InvalidRequestError(PceError):
    """A path request or a parameter is out of range (names the field and the accepted range)."""


class TopologyInUseError(PceError):
    """The topology cannot be replaced while paths are installed (unless forced)."""


class NvdError(PceError):
    """The NVD API answered with an error or something that is not NVD CVE API 2.0 JSON."""


class ExposureExistsError(PceError):
    """The node already carries this CVE (change its remediation level instead)."""
