"""Consent and policy enforcement at each site."""
