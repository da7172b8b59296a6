"""Reading config YAML: a key given twice is an error, everything else is yaml.safe_load."""

from __future__ import annotations

import pytest

from mergelab.errors import ConfigError
from mergelab.yamlfile import read_mapping

TWICE = "(allowed: each key once; YAML would silently keep the last)"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: 1\nb: 2\na: 3\n", f"a: given twice, on lines 1 and 3 {TWICE}"),
        ("train:\n  lr: 0.1\n  lr: 0.2\n", f"train.lr: given twice, on lines 2 and 3 {TWICE}"),
        (
            "pairs:\n  - {x: 1}\n  - {y: 1, y: 2}\n",
            f"pairs[1].y: given twice, on lines 3 and 3 {TWICE}",
        ),
        ("1: a\n1.0: b\n", f"1.0: given twice, on lines 1 and 2 {TWICE}"),  # one dict key
    ],
)
def test_key_given_twice_names_the_key_and_both_lines(tmp_path, text, problem):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        read_mapping(path, "study config", ConfigError)
    assert str(exc.value) == f"{path}: {problem}"


def test_safe_load_semantics_otherwise(tmp_path):
    path = tmp_path / "c.yaml"
    # a merge key may be overridden: that is what it is for
    path.write_text("base: &b {lr: 0.1, steps: 3}\nrun:\n  <<: *b\n  lr: 0.2\nsame: [*b, *b]\n")
    assert read_mapping(path, "recipe") == {
        "base": {"lr": 0.1, "steps": 3},
        "run": {"lr": 0.2, "steps": 3},
        "same": [{"lr": 0.1, "steps": 3}, {"lr": 0.1, "steps": 3}],
    }
    path.write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML \(could not determine a "):
        read_mapping(path, "recipe", ConfigError)
