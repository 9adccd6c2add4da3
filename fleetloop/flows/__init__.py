"""Prefect 3 flows: thin wrappers over fleetloop.pipeline and the area modules.

One flow per step plus ``weekly-cycle``; deployments are declared in
:mod:`fleetloop.flows.deployments`.
"""
