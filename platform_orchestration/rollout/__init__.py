"""Cluster rollout in health-gated waves, and clusters observed for drift. No Dagster here:
the Dagster layer (assets/kubernetes.py, checks/kubernetes.py, ops/rollout.py) only calls this.

* :mod:`.plans`: rollout plans (deploy/rollout/plans.yaml) validated against the fleet;
* :mod:`.engine`: one wave at a time: apply or Argo CD sync, health and revision gate, bake;
* :mod:`.observe`: what a cluster runs, and the drift checks judging it.
"""
