"""The layers of DESIGN.md: the engine (qllm/) never imports the harness, and adding a scheduling
policy is one class and one YAML file."""

from __future__ import annotations

import ast
import textwrap

import pandas as pd
import pytest
import yaml

from harness.traces.workload import PROJECT_ROOT
from tests.helpers import TINY_SWEEP, run_cli


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_engine_never_imports_the_harness():
    files = sorted((PROJECT_ROOT / "qllm").rglob("*.py"))
    assert len(files) > 10
    offending = {str(p.relative_to(PROJECT_ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "harness")
                 for p in files}  # fmt: skip
    assert not any(offending.values()), offending


FRAME_INSIDES = ("gi_frame", "gi_yieldfrom", "f_locals", "f_back", "currentframe", "sys._getframe")


def test_nothing_reads_a_generator_frame():
    """What a suspended pass holds and what each expert received are reported by its executor
    (qllm.executor.ForwardPass); no module of the engine or the harness looks inside a frame, so
    renaming a local cannot change a memory decision or a profile."""
    files = sorted((PROJECT_ROOT / "qllm").rglob("*.py")) + sorted((PROJECT_ROOT / "harness").rglob("*.py"))
    found = {str(p.relative_to(PROJECT_ROOT)): [name for name in FRAME_INSIDES if name in p.read_text()] for p in files}
    assert len(files) > 20 and not {path: names for path, names in found.items() if names}


ENGINE_INSIDES = {"scheduler", "executor", "memory", "policy", "running", "suspended", "waiting"}


def test_the_server_never_reaches_inside_the_engine():
    """qllm/server/ uses the engine through qllm.served_engine.ServedEngine only: no attribute of the
    engine's insides is read, and every gauge it shows is a field of the engine's stats record."""
    from dataclasses import fields

    from qllm.events import EngineStats
    from qllm.server.metrics import STATS_GAUGES

    reached = {}
    for path in sorted((PROJECT_ROOT / "qllm" / "server").glob("*.py")):
        tree = ast.parse(path.read_text())
        attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        reached[path.name] = sorted((attributes & ENGINE_INSIDES) | (calls & {"hasattr"}))
    assert not any(reached.values()), reached
    assert set(STATS_GAUGES) <= {field.name for field in fields(EngineStats)}


def targets(node) -> list[str]:
    """Every `_target_` in a config file's tree."""
    if isinstance(node, dict):
        found = [node["_target_"]] if "_target_" in node else []
        return found + [t for value in node.values() for t in targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in targets(value)]
    return []


# The engine's own config groups: what it is built from (its executor and clock, its policies), never the harness.
ENGINE_GROUPS = ("executor", "policy", "checkpoint", "engine_base")


def test_the_engines_config_groups_name_only_the_engines_classes():
    from harness.app import CONF_DIR

    found = {}
    for group in ENGINE_GROUPS:
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            found[f"{group}/{path.name}"] = targets(yaml.safe_load(path.read_text()))
    assert {"qllm.clock.RealClock", "qllm.clock.VirtualClock"} <= {t for ts in found.values() for t in ts}
    offending = {name: [t for t in ts if t.split(".")[0] != "qllm"] for name, ts in found.items()}
    assert not any(offending.values()), offending


SHORTEST_FIRST = '''
from qllm.policies.base import QueuePolicy
from qllm.policies.protocol import Decision
from qllm.queues import FCFSQueue, take_batch


class ShortestPromptFirst(QueuePolicy):
    """Prompts shortest first, then one decode batch; never ranks queued work above running work."""

    def __init__(self, max_batch_size):
        self.max_batch_size = max_batch_size
        self.prefill, self.decode = [], FCFSQueue()

    def queues(self):
        return self.prefill, self.decode

    def add(self, sequence):
        if sequence.is_prefill:
            self.prefill.append(sequence)
        else:
            self.decode.add(sequence)

    def schedule(self):
        if self.prefill:
            self.prefill.sort(key=lambda s: s.num_new_tokens)
            batch, self.prefill = self.prefill[: self.max_batch_size], self.prefill[self.max_batch_size :]
            return Decision(start=batch)
        return Decision(start=take_batch(self.decode, self.max_batch_size))
'''


def test_a_policy_of_one_class_and_one_yaml_runs_through_qllm_bench(tmp_path):
    (tmp_path / "my_policies.py").write_text(textwrap.dedent(SHORTEST_FIRST))
    (tmp_path / "conf" / "policy").mkdir(parents=True)
    (tmp_path / "conf" / "policy" / "shortest_first.yaml").write_text(
        "_target_: my_policies.ShortestPromptFirst\nmax_batch_size: 4\n"
    )
    run_dir = tmp_path / "run"
    run_cli(
        *TINY_SWEEP, "engine=[fcfs_cb]", "policy@engine.fcfs_cb.policy=shortest_first",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"hydra.run.dir={run_dir}", "record_token_ids=true",
        env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert "_target_: my_policies.ShortestPromptFirst" in (run_dir / "config.yaml").read_text()
    requests = pd.read_parquet(run_dir / "requests.parquet")
    assert (requests["status"] == "finished").all() and len(requests) == 6
    assert pd.read_parquet(run_dir / "timeline.parquet")["batch_size"].max() <= 4  # the policy's own limit


def test_a_one_class_policy_survives_an_abort_and_one_without_the_protocol_is_refused(config, resources, tmp_path,
                                                                                       monkeypatch):  # fmt: skip
    from hydra.errors import InstantiationException

    from tests.test_abort import is_mid_pass, run_with_abort

    (tmp_path / "my_policies.py").write_text(textwrap.dedent(SHORTEST_FIRST))
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = {"_target_": "my_policies.ShortestPromptFirst", "max_batch_size": 2}
    recorder, requests, _, _ = run_with_abort(config, resources, "fcfs_cb", "r0", is_mid_pass, policy=policy,
                                              granularity="layer")  # aborted mid-pass: its batch is dissolved
    assert all(recorder.requests[r.request_id].finish_s is not None for r in requests[1:])
    # The same policy written without the base class, and without `remove`: refused when the engine is built.
    bare = SHORTEST_FIRST.replace("(QueuePolicy)", "").replace("def queues(self):", "def queued(self):")
    (tmp_path / "bare_policies.py").write_text(textwrap.dedent(bare))
    with pytest.raises(InstantiationException, match=r"ShortestPromptFirst lacks .*remove"):
        run_with_abort(config, resources, "fcfs_cb", "r0", is_mid_pass, policy=policy | {"_target_": "bare_policies.ShortestPromptFirst"})
