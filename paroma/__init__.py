"""PAROMA-MED: federated learning for hospitals, with per-patient consent enforced by each site."""

__version__ = "0.1.0"
