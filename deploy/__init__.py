"""Deployment: the local multi-site launcher, container images and the compose simulation."""
