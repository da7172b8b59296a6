"""The executor loop on this machine: needs before the units that need them, a key listed
twice run once, retries of passing failures (a unit that raises, a worker that dies), no
retry of bad input, the others going on after a failure, and GPU placement."""

from __future__ import annotations

import re

import pytest
from executor_fakes import (
    bad_input,
    crash_always,
    crash_once_beside,
    flaky,
    started,
    where,
    which_gpu,
)

from mergelab.errors import MergelabError
from mergelab.executor import InProcess, ProcessPool, Resources, Unit, UnitsFailed, make_executor


def unit(key, fn=where, needs=(), **kwargs):
    return Unit(key=key, label=f"unit {key}", fn=fn, kwargs=kwargs or {"name": key}, needs=needs)


@pytest.mark.parametrize("make", [InProcess, lambda: ProcessPool(2)], ids=["in-process", "pool"])
def test_order_duplicates_and_values(make):
    finished: list[str] = []
    units = [unit("b", needs=("a",)), unit("a"), unit("c", needs=("b",)), unit("a")]
    with make() as ex:
        got = ex.run(units, on_done=lambda u, v, s: finished.append(u.key))
    assert got == {"a": ("a", None), "b": ("b", None), "c": ("c", None)}
    assert finished == ["a", "b", "c"]  # each after what it needs; "a" once
    assert [(r.key, r.status, r.attempts) for r in ex.records] == [
        ("b", "done", 1),
        ("a", "done", 1),
        ("c", "done", 1),
    ]


def test_a_unit_that_raises_is_retried_and_the_retry_is_reported(tmp_path):
    lines: list[str] = []
    units = [unit("f", flaky, marker_dir=str(tmp_path), name="f", fails=2), unit("g")]
    with InProcess(retries=2) as ex:
        got = ex.run(units, log=lines.append)
    assert got["f"] == "f"
    [rec] = [r for r in ex.records if r.key == "f"]
    assert rec.attempts == 3 and rec.status == "done"
    assert rec.errors == [
        "RuntimeError: f flaked on attempt 1",
        "RuntimeError: f flaked on attempt 2",
    ]
    assert lines == [
        "unit f: attempt 1 of 3 failed (RuntimeError: f flaked on attempt 1); trying again",
        "unit f: attempt 2 of 3 failed (RuntimeError: f flaked on attempt 2); trying again",
    ]


def test_a_lasting_failure_stops_only_what_needs_it(tmp_path):
    units = [
        unit("f", flaky, marker_dir=str(tmp_path), name="f", fails=9),
        unit("after-f", needs=("f",)),
        unit("other"),
    ]
    done: list[str] = []
    with pytest.raises(UnitsFailed) as exc, InProcess(retries=1) as ex:
        ex.run(units, on_done=lambda u, v, s: done.append(u.key))
    assert str(exc.value) == (
        "unit f: RuntimeError: f flaked on attempt 2; 1 unit(s) that need them did not run"
    )
    assert done == ["other"]
    status = {r.key: (r.status, r.attempts) for r in exc.value.records}
    assert status == {
        "f": ("failed", 2),
        "after-f": ("skipped (unit f did not finish)", 0),
        "other": ("done", 1),
    }
    assert len(list(tmp_path.glob("f.*"))) == 2


def test_bad_input_is_not_retried(tmp_path):
    with pytest.raises(UnitsFailed, match=r"^unit x: x: bad input$") as exc, InProcess() as ex:
        ex.run([unit("x", bad_input, marker_dir=str(tmp_path), name="x")])
    assert exc.value.records[0].attempts == 1
    assert isinstance(exc.value, MergelabError)


@pytest.mark.slow
def test_a_worker_that_dies_is_replaced_and_its_unit_run_again(tmp_path):
    units = [
        unit("c", crash_once_beside, marker_dir=str(tmp_path), name="c", beside="d"),
        unit("d", started, marker_dir=str(tmp_path), name="d", seconds=3.0),  # in flight
    ]
    with ProcessPool(2) as ex:
        got = ex.run(units)
    assert got == {"c": "c", "d": ("d", None)}
    [rec] = [r for r in ex.records if r.key == "c"]
    # it died beside "d": neither is charged; run again alone, it finished
    assert (rec.status, rec.attempts, rec.errors) == ("done", 1, [])
    assert len(list(tmp_path.glob("c.[0-9]*"))) == 2


@pytest.mark.slow
def test_gpu_units_run_in_processes_that_see_one_gpu_each(tmp_path):
    gpu = Resources(gpus=1)
    units = [
        Unit(
            str(i),
            f"gpu unit {i}",
            which_gpu,
            kwargs={"name": str(i), "seconds": 1.0},
            resources=gpu,
        )
        for i in range(4)
    ] + [unit("cpu")]
    with ProcessPool(1, gpus=2, units_per_gpu=2) as ex:
        got = ex.run(units)
    assert {got[str(i)][1] for i in range(4)} == {"cuda"}  # the one GPU its process sees
    assert sorted(got[str(i)][2] for i in range(4)) == ["0", "0", "1", "1"]
    assert got["cpu"] == ("cpu", None)  # a CPU unit gets no device
    where = sorted(
        r.where.rsplit(":", 2)[-2:][0] + ":" + r.where.rsplit(":", 1)[-1]
        for r in ex.records
        if r.key != "cpu"
    )
    assert where == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]


@pytest.mark.slow
def test_a_worker_that_keeps_dying_is_found_and_the_others_are_not_charged(tmp_path):
    units = [
        unit("bad1", crash_always, marker_dir=str(tmp_path), name="bad1"),
        unit("bad2", crash_always, marker_dir=str(tmp_path), name="bad2"),
        unit("fine", name="fine", seconds=3.0),
    ]
    with pytest.raises(UnitsFailed) as exc, ProcessPool(3, retries=1) as ex:
        ex.run(units)
    status = {r.key: (r.status, r.attempts) for r in exc.value.records}
    assert status == {"bad1": ("failed", 2), "bad2": ("failed", 2), "fine": ("done", 1)}
    assert re.match(r"unit bad[12]: BrokenProcessPool.*; 1 more unit\(s\) failed$", str(exc.value))
    # each ran alone for the two attempts it is allowed (and maybe once beside the others)
    assert len(list(tmp_path.glob("bad1.*"))) >= 2 and len(list(tmp_path.glob("bad2.*"))) >= 2


def test_units_after_a_skipped_unit_are_skipped_too(tmp_path):
    units = [
        unit("a", flaky, marker_dir=str(tmp_path), name="a", fails=9),
        unit("b", needs=("a",)),
        unit("c", needs=("b",)),
    ]
    with pytest.raises(UnitsFailed, match=r"2 unit\(s\) that need them did not run") as exc:
        InProcess(retries=0).run(units)
    status = {r.key: r.status for r in exc.value.records}
    assert status == {
        "a": "failed",
        "b": "skipped (unit a did not finish)",
        "c": "skipped (unit b did not finish)",
    }


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="not listed"):
        InProcess().run([unit("a", needs=("zz",))])
    with pytest.raises(ValueError, match="cycle"):
        InProcess().run([unit("a", needs=("b",)), unit("b", needs=("a",))])
    with pytest.raises(MergelabError, match="--address is for --executor ray"):
        make_executor("local", address="auto")
    with pytest.raises(MergelabError, match="unknown executor 'dask'; use one of: local, ray"):
        make_executor("dask")


def test_ray_missing_is_one_line_before_anything_runs(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    with pytest.raises(MergelabError, match=r"^--executor ray needs Ray, which is not installed"):
        make_executor("ray")
