"""A 2-replica cluster (eval/replica_harness.py) on the tiny test models, for the scale-out tests."""

from __future__ import annotations

import os
import sys

import pytest

from xinfang.settings import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "eval"))
from replica_harness import HarnessError, ModelSetup, ReplicaCluster, haproxy_bin, http_get  # noqa: E402

PG_URL = os.environ.get("XINFANG_TEST_POSTGRES_URL")
needs_cluster = pytest.mark.skipif(
    not PG_URL or haproxy_bin() is None,
    reason="multi-replica tests need XINFANG_TEST_POSTGRES_URL and HAProxy (scripts/start-postgres.sh, "
           "scripts/install-haproxy.sh)")


def tiny_setup(service_models, tiny_encoder_dir, **env: str) -> ModelSetup:
    bundles, scorer = service_models
    return ModelSetup(model_dirs=bundles, embed_encoder=str(tiny_encoder_dir), repeat_scorer=scorer,
                      runtime="torch", threads=1, env=dict(env))


__all__ = ["PG_URL", "HarnessError", "ModelSetup", "ReplicaCluster", "http_get", "needs_cluster", "tiny_setup"]
