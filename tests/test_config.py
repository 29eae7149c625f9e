"""params.yaml is parsed once into typed models; bad values fail fast naming the key."""

from pathlib import Path

import pytest

from mirage_safety.config import PROFILE_ENV, ConfigError, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_parse_for_every_profile():
    params = load_params(REPO / "params.yaml")
    assert params.profile == "default"
    for name in params.profiles:
        assert load_params(REPO / "params.yaml", profile=name).profile == name


def test_unknown_key_names_the_full_path():
    with pytest.raises(ConfigError) as exc:
        parse_params({"data": {"world": {"n_trian": 5}}})
    assert "data.world.n_trian: unknown key" in str(exc.value)


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError) as exc:
        parse_params({"train": {"batch_size": "sixteen"}, "eval": {"judge": "gpt"}})
    msg = str(exc.value)
    assert "train.batch_size" in msg and "valid integer" in msg and "'sixteen'" in msg
    assert "eval.judge" in msg and "'world', 'keyword' or 'openai'" in msg
    assert "2 problem(s)" in msg


def test_profile_overrides_merge_and_env_selects(monkeypatch):
    raw = {
        "data": {"world": {"n_train": 100, "image_size": 32}},
        "profiles": {"tiny": {"data": {"world": {"n_train": 7}}}},
    }
    assert parse_params(raw).data.world.n_train == 100
    monkeypatch.setenv(PROFILE_ENV, "tiny")
    p = parse_params(raw)
    assert p.profile == "tiny"
    assert p.data.world.n_train == 7
    assert p.data.world.image_size == 32  # untouched keys survive the merge


def test_unknown_profile_and_bad_profile_values_fail():
    with pytest.raises(ConfigError, match="profile 'nope' is not defined"):
        parse_params({"profiles": {}}, profile="nope")
    with pytest.raises(ConfigError, match=r"(?s)profile 'bad'.*data.world.n_train"):
        parse_params({"profiles": {"bad": {"data": {"world": {"n_train": 0}}}}}, profile="bad")


def test_bad_yaml_file_is_a_clear_error(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(p)
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")


def test_config_is_frozen():
    p = parse_params({})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        p.train.batch_size = 3  # type: ignore[misc]


def test_general_ability_is_measured_through_lmms_eval_only() -> None:
    with pytest.raises(ConfigError, match="general_test is measured through lmms-eval"):
        parse_params({"eval": {"splits": ["test_hard", "general_test"]}})
    p = load_params(REPO / "params.yaml")
    assert "general_test" not in p.eval.splits
    assert p.eval.general.tasks["mirage_world_general"].metric == "exact_match"
    assert p.eval.general.include_path == ["data/lmms_tasks"]
