"""The same executor loop on a local Ray instance (2 CPUs): retries of a unit that raises,
no retry of bad input, and a GPU unit on a cluster without GPUs running on its CPUs."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

import executor_fakes  # noqa: E402
from executor_fakes import bad_input, flaky, where  # noqa: E402

from mergelab.executor import Resources, Unit, UnitsFailed  # noqa: E402
from mergelab.executor.on_ray import RayExecutor  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def executor():
    ray.cloudpickle.register_pickle_by_value(executor_fakes)  # Ray workers do not see tests/
    with RayExecutor(num_cpus=2, retries=2) as ex:
        yield ex
    ray.cloudpickle.unregister_pickle_by_value(executor_fakes)


def test_retries_needs_and_records_on_ray(executor, tmp_path):
    lines: list[str] = []
    units = [
        Unit("f", "unit f", flaky, kwargs={"marker_dir": str(tmp_path), "name": "f", "fails": 1}),
        Unit("g", "unit g", where, kwargs={"name": "g"}, needs=("f",)),
        Unit("gpu", "unit gpu", where, kwargs={"name": "gpu"}, resources=Resources(gpus=1)),
    ]
    got = executor.run(units, log=lines.append)
    assert got == {"f": "f", "g": ("g", None), "gpu": ("gpu", None)}  # no GPU: on a CPU
    [rec] = [r for r in executor.records if r.key == "f"]
    assert rec.attempts == 2 and rec.status == "done"
    assert rec.errors == ["RuntimeError: f flaked on attempt 1"]
    assert lines == [
        "unit f: attempt 1 of 3 failed (RuntimeError: f flaked on attempt 1); trying again"
    ]
    assert all(r.where.count(":") >= 1 for r in executor.records)  # host:pid


def test_bad_input_fails_once_on_ray(executor, tmp_path):
    units = [Unit("x", "unit x", bad_input, kwargs={"marker_dir": str(tmp_path), "name": "x"})]
    with pytest.raises(UnitsFailed, match=r"^unit x: x: bad input$"):
        executor.run(units)
    assert len(list(tmp_path.glob("x.*"))) == 1
