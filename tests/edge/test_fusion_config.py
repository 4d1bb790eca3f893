"""Fusion config values are type- and range-checked where they are read: a `--config` file and a bundle manifest
(issue 17, defect 2): one `Error:` line naming the field, from `gloss-export fusion`, `inspect`, `recommend` and
`serve` alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gloss.edge.bundle import MANIFEST_NAME, load_bundle
from gloss.edge.cli import app as edge_app
from gloss.edge.errors import InputError
from gloss.edge.fusion import FusionConfig, load_fusion_config
from gloss.export.cli import app as export_app
from tests.conftest import SEQUENCES_PATH, copy_bundle
from tests.fakes import error_line

BAD_VALUES = [
    ({"history_len": 2.5}, "--history-len must be a whole number, got 2.5"),
    ({"history_len": True}, "--history-len must be a whole number, got true"),
    ({"num_popular": "20"}, '--num-popular must be a whole number, got "20"'),
    ({"text_weight": "lots"}, '--text-weight must be a number, got "lots"'),
    ({"text_weight": [1, 2]}, "--text-weight must be a number, got [1, 2]"),
    ({"beam_temperature": None}, "--beam-temperature must be a number, got null"),
    ({"history_decay": {"a": 1}}, '--history-decay must be a number, got {"a": 1}'),
    ({"copurchase_weight": False}, "--copurchase-weight must be a number, got false"),
    ({"exclude_seen": "yes"}, '--exclude-seen must be true or false, got "yes"'),
    ({"exclude_seen": 1}, "--exclude-seen must be true or false, got 1"),
]
IDS = [next(iter(kw)) + "=" + repr(next(iter(kw.values()))) for kw, _ in BAD_VALUES]


@pytest.mark.parametrize(("kwargs", "message"), BAD_VALUES, ids=IDS)
def test_config_rejects_values_of_the_wrong_type(kwargs, message):
    with pytest.raises(InputError) as info:
        FusionConfig(**kwargs)
    assert message in str(info.value)


def test_config_accepts_ints_for_floats_and_numpy_scalars():
    import numpy as np

    config = FusionConfig(text_weight=2, history_len=np.int64(3), history_decay=np.float32(0.5),
                          exclude_seen=np.bool_(False))
    assert config.text_weight == 2 and config.history_len == 3 and config.exclude_seen is False
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()  # stays JSON-ready for the manifest


def test_from_dict_names_the_source_and_refuses_unknown_keys_and_non_mappings():
    with pytest.raises(InputError, match=r"^x\.yaml: --history-len must be a whole number, got 2\.5$"):
        FusionConfig.from_dict({"history_len": 2.5}, source="x.yaml")
    with pytest.raises(InputError, match=r"x\.yaml: unknown key\(s\) \['text_wieght'\]"):
        FusionConfig.from_dict({"text_wieght": 1.0}, source="x.yaml")
    with pytest.raises(InputError, match=r"x\.yaml: expected a mapping of FusionConfig fields, got list"):
        FusionConfig.from_dict([1, 2], source="x.yaml")
    assert FusionConfig.from_dict({"history_len": 4}, source="x.yaml") == FusionConfig(history_len=4)


@pytest.mark.parametrize(("kwargs", "message"), BAD_VALUES[:5], ids=IDS[:5])
def test_config_file_with_a_bad_value_is_one_error(tmp_path: Path, kwargs, message):
    path = tmp_path / "fusion.yaml"
    path.write_text(json.dumps(kwargs))  # JSON is YAML
    with pytest.raises(InputError) as info:
        load_fusion_config(path)
    assert str(info.value) == f"{path}: {message}"


def test_cli_fusion_refuses_a_bad_config_and_keeps_the_bundle(fusion_bundle: Path, tmp_path: Path):
    bundle = copy_bundle(fusion_bundle, tmp_path / "bundle")
    before = (bundle / MANIFEST_NAME).read_bytes()
    config = tmp_path / "fusion.yaml"
    for text, message in (("history_len: 2.5\n", "--history-len must be a whole number, got 2.5"),
                          ("text_weight: lots\n", '--text-weight must be a number, got "lots"'),
                          ("text_weight: [1, 2]\n", "--text-weight must be a number, got [1, 2]")):
        config.write_text(text)
        result = CliRunner().invoke(export_app, ["fusion", str(bundle), "--sequences", str(SEQUENCES_PATH),
                                                 "--config", str(config)])
        assert result.exit_code == 2 and message in error_line(result), result.output
    assert (bundle / MANIFEST_NAME).read_bytes() == before


@pytest.fixture
def bad_manifest_bundle(fusion_bundle: Path, tmp_path: Path) -> Path:
    """A fusion bundle whose manifest says ``history_len: 2.5`` (the manifest itself carries no checksum)."""
    bundle = copy_bundle(fusion_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["fusion"]["config"]["history_len"] = 2.5
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    return bundle


def test_a_bad_manifest_config_is_refused_when_the_bundle_opens_fusion(bad_manifest_bundle: Path):
    with pytest.raises(InputError) as info:
        load_bundle(bad_manifest_bundle).open_fusion()
    assert str(info.value).startswith(f"{bad_manifest_bundle / MANIFEST_NAME}: fusion.config: --history-len must "
                                      "be a whole number, got 2.5")


@pytest.mark.parametrize("command", [["inspect"], ["recommend", "--item", "B000052YM7"], ["serve", "--port", "0"]])
def test_edge_commands_refuse_a_bad_manifest_config_with_one_error_line(bad_manifest_bundle: Path, command):
    args = [command[0], str(bad_manifest_bundle), *command[1:]]
    result = CliRunner().invoke(edge_app, args)  # serve fails before binding (sockets are off in tests)
    assert result.exit_code == 2, result.output
    assert "fusion.config: --history-len must be a whole number, got 2.5" in error_line(result)
    assert "Traceback" not in result.output
