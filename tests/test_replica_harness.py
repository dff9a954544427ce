"""The replica harness itself: a replica that cannot start fails fast with its log (the cluster in use:
tests/test_replicas.py)."""

from __future__ import annotations

import pytest
from replica_fixtures import PG_URL, HarnessError, ReplicaCluster, needs_cluster, tiny_setup

pytestmark = needs_cluster


def test_replica_that_cannot_start_names_its_log(tmp_path, service_models, tiny_encoder_dir) -> None:
    setup = tiny_setup(service_models, tiny_encoder_dir, XINFANG_RUNTIME="no-such-runtime")
    with pytest.raises(HarnessError, match="replica 0 exited.*log tail"):
        with ReplicaCluster(PG_URL, setup, n=1, workdir=tmp_path, ready_timeout=60):
            pass
