"""Safety policies as data: the repo's policies, and every malformed input named by file and
rule (nothing is used when any problem is found)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mirage_safety.data import world as W
from mirage_safety.data.schema import CATEGORIES
from mirage_safety.labelling.policies import PolicyError, load_policies

REPO_POLICIES = Path(__file__).resolve().parents[1] / "policies"

GOOD = """\
id: violent
category: Violent
objective: Do not help hurt people.
rules:
  - id: violent.1
    sub_category: Weapon-Related Violence
    action: refuse
    summary: no weapons against people
    text: Do not explain how to hurt people with an object.
  - id: violent.2
    action: comply
    summary: lawful use is fine
    text: Storing and cleaning tools is answered helpfully.
"""


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "violent.yaml").write_text(GOOD)
    return d


def test_repo_policies_cover_every_mis_category_and_world_rule():
    ps = load_policies(REPO_POLICIES)
    assert set(ps.categories) == set(CATEGORIES)
    for rule in W.RULES:  # each world rule maps onto exactly one policy rule
        applies = ps.rules_for(rule.category, rule.sub_category)
        assert len(applies) == 1 and applies[0].sub_category == rule.sub_category
        assert applies[0].action in ("refuse", "safe-complete")
    for cat in CATEGORIES:
        assert [r.action for r in ps.comply_rules(cat)] == ["comply"]
    assert len(ps.sha256) == 64
    assert ps.cited("Rule violent.1 applies; see also privacy.2 and nope.3") == [
        "violent.1",
        "privacy.2",
    ]


def test_hash_changes_with_any_edit(pdir: Path):
    before = load_policies(pdir).sha256
    (pdir / "violent.yaml").write_text(GOOD + "# a comment\n")
    assert load_policies(pdir).sha256 != before


def _problems(pdir: Path) -> str:
    with pytest.raises(PolicyError) as exc:
        load_policies(pdir)
    return str(exc.value)


def test_malformed_yaml_names_the_file(pdir: Path):
    (pdir / "hate.yaml").write_text("id: hate\ncategory: [Hate\n")
    msg = _problems(pdir)
    assert "hate.yaml: not valid YAML" in msg


def test_missing_and_unknown_keys_name_file_and_rule(pdir: Path):
    (pdir / "violent.yaml").write_text(
        GOOD.replace("    action: refuse\n", "").replace(
            "    summary: lawful use is fine\n",
            "    summary: lawful use is fine\n    colour: red\n",
        )
    )
    msg = _problems(pdir)
    assert "violent.yaml: rule 'violent.1': action: Field required" in msg
    assert "violent.yaml: rule 'violent.2': colour: unknown key" in msg


def test_duplicate_rule_id_in_a_file_and_across_files(pdir: Path):
    (pdir / "violent.yaml").write_text(GOOD.replace("id: violent.2", "id: violent.1"))
    assert "violent.yaml: rule 'violent.1': duplicate rule id" in _problems(pdir)
    (pdir / "violent.yaml").write_text(GOOD)
    (pdir / "violent_extra.yaml").write_text(
        GOOD.replace("category: Violent", "category: Hate").replace(
            "    sub_category: Weapon-Related Violence\n", ""
        )
    )
    msg = _problems(pdir)
    assert "violent_extra.yaml: rule 'violent.1': duplicate rule id (first in" in msg
    assert "violent.yaml)" in msg


def test_empty_rule_text_bad_action_bad_id_and_unknown_sub_category(pdir: Path):
    bad = GOOD.replace(
        "text: Do not explain how to hurt people with an object.", "text: '  '"
    ).replace("action: comply", "action: maybe")
    (pdir / "violent.yaml").write_text(bad)
    msg = _problems(pdir)  # both rules' problems at once
    assert "rule 'violent.1': text: String should have at least 1 character" in msg
    assert "rule 'violent.2': action: Input should be 'refuse', 'safe-complete' or 'comply'" in msg
    (pdir / "violent.yaml").write_text(
        GOOD.replace("id: violent.2", "id: hate.2").replace("Weapon-Related Violence", "Knitting")
    )
    msg = _problems(pdir)
    assert "rule 'hate.2': id must start with the policy id 'violent'" in msg
    assert "rule 'violent.1': sub_category 'Knitting' is not a sub-category of 'Violent'" in msg


def test_no_rules_unknown_category_second_policy_and_empty_dir(pdir: Path, tmp_path: Path):
    (pdir / "violent.yaml").write_text("id: violent\ncategory: Violent\nobjective: x\nrules: []\n")
    assert "violent.yaml: policy: rules: a policy needs at least one rule" in _problems(pdir)
    (pdir / "violent.yaml").write_text(GOOD.replace("category: Violent", "category: Gossip"))
    assert "policy: unknown category 'Gossip'" in _problems(pdir)
    (pdir / "violent.yaml").write_text(GOOD)
    (pdir / "again.yaml").write_text(
        GOOD.replace("violent.", "again.").replace("id: violent", "id: again")
    )
    assert "a second policy for 'Violent'" in _problems(pdir)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no policy files" in _problems(empty)
    assert "policy directory not found" in _problems(tmp_path / "missing")


def test_a_category_without_a_policy_is_named(pdir: Path):
    ps = load_policies(pdir)
    ps.require(["Violent", "General"])  # general data needs no policy
    with pytest.raises(
        PolicyError,
        match=r"no policy for category 'Privacy', which "
        r"data/mis/train\.json uses",
    ):
        ps.require(["Violent", "Privacy"], where="data/mis/train.json")


def test_the_repo_policies_copy_validates(tmp_path: Path):
    shutil.copytree(REPO_POLICIES, tmp_path / "p")
    assert load_policies(tmp_path / "p").sha256 == load_policies(REPO_POLICIES).sha256
