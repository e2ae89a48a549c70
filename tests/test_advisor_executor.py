"""Sweeps give the same answer on every executor, including a real Dask LocalCluster."""
from __future__ import annotations

import pytest

from twinbench.advisor.executor import map_points, open_executor
from twinbench.traces.errors import TwinbenchError


def square_plus(x):  # module level: picklable for process pools and Dask workers
    return x * x + 1


def fail_on_three(x):
    if x == 3:
        raise RuntimeError("boom at 3")
    return x


@pytest.mark.parametrize("spec", ["serial", "threads", "process"])
def test_results_in_input_order(spec):
    items = list(range(20, 0, -1))
    with open_executor(spec, workers=2) as ex:
        assert map_points(square_plus, items, ex) == [square_plus(x) for x in items]


def test_a_failing_point_raises():
    with open_executor("serial") as ex, pytest.raises(RuntimeError, match="boom at 3"):
        map_points(fail_on_three, [1, 2, 3, 4], ex)


def test_bad_executor_spec_is_a_user_error():
    with pytest.raises(TwinbenchError, match="--executor"):
        with open_executor("gpu-farm"):
            pass


def test_dask_local_cluster_runs_the_sweep():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  protocol="tcp://", dashboard_address=None) as cluster:
        address = cluster.scheduler_address.replace("tcp://", "dask://")
        with open_executor(address) as ex:
            got = map_points(square_plus, list(range(50)), ex)
            workers_used = len(ex._client.scheduler_info()["workers"])
    assert got == [square_plus(x) for x in range(50)]
    assert workers_used == 2


def test_unreachable_dask_scheduler_is_a_user_error():
    pytest.importorskip("distributed")
    with pytest.raises(TwinbenchError, match="cannot reach"):
        with open_executor("dask://127.0.0.1:9", connect_timeout_s=1.0):
            pass
