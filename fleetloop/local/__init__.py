"""The embedded default's servers (Prefect, Label Studio) and supervised processes.

One process manager, no cycles (each module imports only those below it):

* ``services``: the orchestration behind ``fleetloop services up|down|status`` and how
  fleetloop finds the running Prefect server (``ensure_prefect_env``);
* ``prefect_server``, ``label_studio``: what each server is (command, environment, health,
  Label Studio's install and token provisioning);
* ``server``: a server's directory, state file, lock and life cycle (``ServerProcess``,
  ``LocalServer``, ``ServiceStatus``, ``ServiceError``);
* ``process``: the mechanism: whitelisted environments, own sessions, recognising a recorded
  pid, stopping a whole process tree (SIGTERM → SIGINT → SIGKILL), supervising a child
  (``fleetloop worker``).
"""
