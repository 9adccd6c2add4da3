"""Sanity-check mining: checks over every frame, frame priority, budgeted diverse selection.

Entry points (imported from their modules, so this package stays cheap to import):

* ``fleetloop.mine.mining``: ``mine(logs, params) -> MiningResult``, ``rank(frames)``,
  ``select(frames, budget, params)``
* ``fleetloop.mine.params``: ``MiningParams``
* ``fleetloop.mine.files``: ``mine_files(root, fmt, out, ...)`` (what ``fleetloop mine`` runs)

Modules: ``geometry`` (projection, IoU, assignment kernels), ``batch`` (flat arrays of a batch),
``lidar_camera``, ``temporal`` (tracks, self-association, tracker <-> detector), ``uncertainty``,
``flags`` (flag columns), ``ranking``. The Great Expectations suites in ``suites/`` belong to
``fleetloop.ingest.validation``.
"""
