"""Declarative automation of the teacher's lineage (issue 15, item 4), evaluated by Dagster's
own `evaluate_automation_conditions` on an instance: no daemon, no training.

With `dagster dev` running, the sensor `follow_the_teacher` evaluates these same conditions
every 30 s. After everything is materialised, an observation of `teacher_model` that finds a
new fingerprint must request exactly the assets downstream of it; an observation of the same
teacher, a tick without news, or an update outside the lineage must request nothing.
"""

import datetime

import pytest
from dagster import (AssetKey, AssetMaterialization, AssetSelection, DagsterInstance, DataVersion,
                     DefaultSensorStatus, asset, evaluate_automation_conditions, materialize, observable_source_asset)

from tests.conftest import build_tiny_bert

TEACHER_DEPENDENT = {"teacher_embeddings", "stage1_checkpoint", "stage2_checkpoint", "mlir_eval", "au_analysis"}
SENTENCES = ["in the beginning god created the heaven and the earth", "and the earth was without form"]


@pytest.fixture(scope="module")
def defs():
    from mimo_pipeline.definitions import defs

    return defs


def _names(keys):
    return {k.to_user_string() for k in keys}


class Ticks:
    """Successive automation ticks on one instance, a minute apart, each from the last cursor."""

    def __init__(self, defs, instance, start=datetime.datetime(2026, 3, 2, 10, 20)):
        self.defs, self.instance, self.now, self.cursor = defs, instance, start, None
        self.keys = list(defs.resolve_asset_graph().get_all_asset_keys())

    def __call__(self, minutes: float = 1) -> set:
        self.now += datetime.timedelta(minutes=minutes)
        result = evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor,
                                                evaluation_time=self.now)
        self.cursor = result.cursor
        return {k.to_user_string() for k in self.keys if result.get_num_requested(k)}


def test_conditions_sit_exactly_on_what_depends_on_the_teacher(defs):
    graph = defs.resolve_asset_graph()
    with_condition = {k for k in graph.materializable_asset_keys if graph.get(k).automation_condition}
    below = AssetSelection.assets("teacher_model").downstream(include_self=False).resolve(graph)
    assert _names(with_condition) == _names(below) == TEACHER_DEPENDENT
    assert {graph.get(k).automation_condition.get_label() for k in with_condition} == {"follows_teacher"}
    sensor = defs.resolve_sensor_def("follow_the_teacher")
    assert sensor.default_status == DefaultSensorStatus.RUNNING  # on as soon as `dagster dev` runs
    assert _names(sensor.asset_selection.resolve(graph)) == TEACHER_DEPENDENT | {"teacher_model"}


def test_a_new_teacher_observation_requests_exactly_its_descendants(defs, tmp_path, monkeypatch):
    """The repo's own definitions and teacher observation (two tiny local teachers), the other
    assets' materialisations reported to the instance."""
    old, new = (build_tiny_bert(tmp_path / name, SENTENCES, seed=seed) for name, seed in (("old", 0), ("new", 1)))
    monkeypatch.setenv("MIMO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MIMO_TEACHER", str(old))
    instance = DagsterInstance.ephemeral()
    tick = Ticks(defs, instance)

    def observe_teacher():  # what the UI's "Observe" on teacher_model launches
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[AssetKey("teacher_model")])
        return result.asset_observations_for_node("teacher_model")[0].tags["dagster/data_version"]

    assert tick() == set()
    fingerprint = observe_teacher()
    for key in defs.resolve_asset_graph().toposorted_asset_keys:  # everything materialised once
        if key != AssetKey("teacher_model"):
            instance.report_runless_asset_event(AssetMaterialization(key))
    assert tick() == set() and tick() == set()

    assert observe_teacher() == fingerprint  # the same teacher observed again: not an update
    assert tick() == set()
    instance.report_runless_asset_event(AssetMaterialization("parallel_corpus"))  # outside the lineage
    assert tick() == set()

    monkeypatch.setenv("MIMO_TEACHER", str(new))
    assert observe_teacher() != fingerprint
    assert tick() == TEACHER_DEPENDENT
    assert tick() == set()  # requested once, not again while it runs


def _stub_definitions(graph, teacher_version: dict):
    """The real graph (keys, dependencies, automation conditions) around no-op computations,
    so that the requested assets can really run, as the sensor's run would."""
    teacher = graph.get(AssetKey("teacher_model"))

    @observable_source_asset(name="teacher_model", automation_condition=teacher.automation_condition)
    def teacher_stub():
        return DataVersion(teacher_version["fingerprint"])

    def stub(key):
        node = graph.get(key)

        @asset(key=key, deps=list(node.parent_keys), automation_condition=node.automation_condition)
        def _noop():
            return None

        return _noop

    return [teacher_stub, *(stub(k) for k in graph.materializable_asset_keys)]


def test_the_automation_run_settles_and_the_hourly_observation_alone_triggers_nothing(defs):
    from dagster import Definitions

    version = {"fingerprint": "old"}
    stubs = _stub_definitions(defs.resolve_asset_graph(), version)
    stub_defs = Definitions(assets=stubs)
    instance = DagsterInstance.ephemeral()
    tick = Ticks(stub_defs, instance)
    by_name = {a.key.to_user_string(): a for a in stubs}
    teacher = by_name.pop("teacher_model")

    assert tick() == set()
    materialize([teacher], selection=["teacher_model"], instance=instance)
    materialize(list(by_name.values()), instance=instance)  # full_mimo: everything in one run
    assert tick() == set()

    version["fingerprint"] = "new"
    materialize([teacher], selection=["teacher_model"], instance=instance)
    requested = tick()
    assert requested == TEACHER_DEPENDENT
    materialize(list(by_name.values()), selection=sorted(requested), instance=instance)  # the sensor's run
    assert tick() == set() and tick() == set()

    # the hourly cron asks for an observation of the teacher, and for nothing else
    assert tick(minutes=60) == {"teacher_model"}
    materialize([teacher], selection=["teacher_model"], instance=instance)  # same fingerprint
    assert tick() == set()
