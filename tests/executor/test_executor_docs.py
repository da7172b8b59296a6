"""docs/ray.md and its cluster config: every `mergelab study` command there parses with
the CLI as written, and the example cluster config is YAML that runs those commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from mergelab.cli import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _commands(text: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    joined = [b.replace("\\\n", " ") for b in blocks]
    return [line.strip() for b in joined for line in b.splitlines() if line.strip()]


def test_every_study_command_in_the_ray_guide_parses():
    commands = [c for c in _commands((DOCS / "ray.md").read_text()) if c.startswith("mergelab")]
    assert len(commands) == 2
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert args.config == "/shared/paper.yaml"
    run = parser.parse_args(shlex.split(commands[1])[1:])
    assert (run.executor, run.address, run.units_per_gpu) == ("ray", "auto", 4)


def test_the_example_cluster_config_is_yaml_with_a_shared_folder_and_gpus():
    cluster = yaml.safe_load((DOCS / "ray-cluster.yaml").read_text())
    nodes = cluster["available_node_types"]
    assert cluster["head_node_type"] in nodes
    assert all(n["resources"]["GPU"] == 1 for n in nodes.values())
    assert any("/shared" in c for c in cluster["initialization_commands"])
    assert any("mergelab[ray]" in c for c in cluster["setup_commands"])
