"""The ``openai`` teacher through the shared endpoint client, against a scripted local
chat-completions server: request shape, retries on timeouts / 429 / 5xx, malformed and
empty answers counted per record, the content-hash cache shared across runs."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from fake_endpoint import FakeEndpoint
from mirage_safety.config import EndpointConfig, LabelConfig
from mirage_safety.labelling.label import LabellingError, run_label
from tiny_world import world_data

REPO = Path(__file__).resolve().parents[1]
GOOD = (
    "The first image shows a crowbar. The second image shows a car door. Rule illegal.1 "
    "applies. Forcing it open is a property crime. So I will not give instructions."
)
CASES = {  # case -> (script, expected outcome: None = labelled, else the failure kind)
    "ok": ([("ok", GOOD)], None),
    "slow": ([("slow", 1.2, GOOD), ("ok", GOOD)], None),
    "limited": ([("status", 429, {"Retry-After": "0"}, "slow down"), ("ok", GOOD)], None),
    "flaky": ([("status", 503, {}, "busy"), ("ok", GOOD)], None),
    "garbage": ([("ok", "zq zq zq #!")], "malformed"),
    "empty": ([("ok", "   ")], "malformed"),
    "cut": ([("cut", GOOD)], "malformed"),
    "unknown-rule": ([("ok", GOOD.replace("illegal.1", "illegal.9"))], "malformed"),
    "down": ([("status", 500, {}, "down")], "http"),
    "bad-request": ([("status", 400, {}, '{"error": "no"}')], "http"),
}


@pytest.fixture
def server():
    s = FakeEndpoint()
    yield s
    s.close()


@pytest.fixture
def data(tmp_path, tmp_path_factory) -> Path:
    """A private copy of the tiny world whose first train records carry a case tag."""
    dst = tmp_path / "data"
    shutil.copytree(world_data(tmp_path_factory) / "mis", dst / "mis")
    path = dst / "mis" / "train.json"
    recs = json.loads(path.read_text())[: len(CASES)]
    for rec, case in zip(recs, CASES, strict=True):
        turn = rec["conversations"][0]
        turn["value"] = turn["value"].replace(
            "<image>\n<image>\n", f"<image>\n<image>\n[case:{case}] "
        )
    path.write_text(json.dumps(recs))
    return dst


def _cfg(url: str, **kw) -> LabelConfig:
    endpoint = EndpointConfig(
        base_url=url,
        model="teacher-x",
        api_key_env="MIRAGE_TEST_KEY",
        timeout_s=0.5,
        max_retries=2,
        backoff_s=0.01,
        concurrency=4,
    )
    return LabelConfig(
        teacher="openai",
        style="policy",
        policies=str(REPO / "policies"),
        prompts=str(REPO / "prompts"),
        openai=endpoint,
        **kw,
    )


def test_openai_teacher_labels_retries_and_counts_failures(server, data, tmp_path):
    for case, (script, _) in CASES.items():
        server.script[case] = list(script)
    out, cache = tmp_path / "labelled", tmp_path / "cache"
    manifest = run_label(
        _cfg(server.url, max_failure_fraction=0.9),
        data_dir=data,
        out_dir=out,
        metrics_path=tmp_path / "m.json",
        cache_dir=cache,
        progress=False,
    )
    want_ok = [c for c, (_, kind) in CASES.items() if kind is None]
    assert manifest["labelled"] == len(want_ok)
    assert manifest["failed"] == len(CASES) - len(want_ok)
    assert manifest["failures_by_kind"] == {"http": 2, "malformed": 4}
    # tokens are billed for every answer, malformed ones included (4 of them)
    assert manifest["prompt_tokens"] == 11 * (len(want_ok) + 4)
    labelled = json.loads((out / "train.json").read_text())
    assert all(r["conversations"][-1]["value"] == GOOD for r in labelled)
    assert all(
        r["teacher"]["model"] == "teacher-x" and r["teacher"]["rules"] == ["illegal.1"]
        for r in labelled
    )
    failures = {
        json.loads(x)["id"]: json.loads(x)
        for x in (out / "failures.jsonl").read_text().splitlines()
    }
    errors = {f["error"].split(":")[0] for f in failures.values()}
    assert errors >= {
        "empty answer",
        "answer cut at max_tokens (256)",
        "http 500",
        "http 400",
        "unparseable",
    }
    assert any("cites no rule" in f["error"] for f in failures.values())
    assert any("unknown rule id(s) illegal.9" in f["error"] for f in failures.values())
    assert server.calls("slow") == 2 and server.calls("limited") == 2
    assert server.calls("flaky") == 2 and server.calls("down") == 3  # 1 + max_retries
    assert server.calls("bad-request") == 1 and server.calls("garbage") == 1  # no retry

    # the request: the style's prompt files, both images, the instruction and the policy
    req = next(r for r in server.requests if r["case"] == "ok")
    body = req["body"]
    system = body["messages"][0]["content"]
    assert system.startswith((REPO / "prompts" / "teacher_policy.md").read_text().strip()[:60])
    assert "without any <think> block" in system
    images = [p for p in body["messages"][1]["content"] if p["type"] == "image_url"]
    assert len(images) == 2 and all(
        base64.b64decode(p["image_url"]["url"].split(",")[1])[:4] == b"\x89PNG" for p in images
    )
    user = req["user_text"]
    assert "Policy illegal (Illegal Activity)" in user and "illegal.1 [safe-complete]" in user
    assert "The dataset marks this request as" in user
    assert body["model"] == "teacher-x" and body["max_tokens"] == 256

    # a re-run asks only for what failed: the good answers come from the cache
    n = len(server.requests)
    again = run_label(
        _cfg(server.url, max_failure_fraction=0.9),
        data_dir=data,
        out_dir=out,
        metrics_path=tmp_path / "m.json",
        cache_dir=cache,
        progress=False,
    )
    assert again["cached"] == len(want_ok)
    assert {r["case"] for r in server.requests[n:]} == {c for c, (_, k) in CASES.items() if k}


def test_think_format_requires_the_block(server, data, tmp_path):
    for case in CASES:
        server.script[case] = [("ok", f"<think>\n{GOOD}\n</think>\n\nSo I will not help.")]
    server.script["garbage"] = [("ok", GOOD)]  # no <think> block: malformed in this format
    manifest = run_label(
        _cfg(server.url, format="think", max_failure_fraction=0.5),
        data_dir=data,
        out_dir=tmp_path / "o",
        metrics_path=tmp_path / "m",
        cache_dir=None,
        progress=False,
    )
    assert manifest["failed"] == 1 and manifest["labelled"] == len(CASES) - 1


def test_a_dead_endpoint_fails_the_stage_and_writes_nothing(data, tmp_path):
    s = FakeEndpoint()
    url = s.url
    s.close()
    out = tmp_path / "labelled"
    with pytest.raises(LabellingError, match=r"'transport': 10"):
        run_label(
            _cfg(url),
            data_dir=data,
            out_dir=out,
            metrics_path=tmp_path / "m.json",
            cache_dir=None,
            progress=False,
        )
    assert not out.exists() and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("source", ["mis", "msr_align"])
def test_imported_real_data_is_relabelled_with_policy_grounded_labels(server, tmp_path, source):
    """Real data goes through the same stage: an imported release, relabelled by a teacher."""
    from mirage_safety.config import parse_params
    from mirage_safety.data.generate import generate
    from realdata_fixtures import build_mis, build_msr

    root = (build_mis if source == "mis" else build_msr)(tmp_path / "release")
    data = tmp_path / "data"
    generate(
        parse_params({"data": {"source": source, source: {"local_dir": str(root)}}}).data,
        data,
        workers=1,
        progress=False,
    )
    server.default = (
        "The first image shows a tool. The second image shows a door. Rule "
        "illegal.1 applies. So I will not help; a locksmith can."
    )
    manifest = run_label(
        _cfg(server.url),
        data_dir=data,
        out_dir=data / "labelled",
        metrics_path=tmp_path / "m.json",
        cache_dir=None,
        progress=False,
    )
    src = json.loads((data / "mis" / "train.json").read_text())
    out = json.loads((data / "labelled" / "train.json").read_text())
    assert manifest["labelled"] == len(src) > 0 and manifest["failed"] == 0
    for before, after in zip(src, out, strict=True):
        # the user turn and the images are the release's; the answer is the teacher's
        assert after["conversations"][0] == before["conversations"][0]
        assert after["images"] == before["images"]
        assert after["conversations"][-1]["value"] == server.default
        assert after["label_style"] == "policy" and after["teacher"]["name"] == "openai"
    # one request per record, each with the record's images and its category's policy
    assert len(server.requests) == len(src)
    n_images = sorted(
        sum(p["type"] == "image_url" for p in q["body"]["messages"][1]["content"])
        for q in server.requests
    )
    assert n_images == sorted(len(r["images"]) for r in src)
    sent = "".join(q["user_text"] for q in server.requests)
    assert all(f"({r['category']})" in sent for r in src)


def test_a_record_without_category_gets_every_policy(server, data, tmp_path):
    """An imported ShareGPT record has category ``unknown``: no policy is missing, and the
    teacher is given all of them to choose from."""
    path = data / "mis" / "train.json"
    recs = json.loads(path.read_text())[:2]
    for r in recs:
        r["category"], r["sub_category"] = "unknown", None
    path.write_text(json.dumps(recs))
    server.default = GOOD
    manifest = run_label(
        _cfg(server.url),
        data_dir=data,
        out_dir=tmp_path / "o",
        metrics_path=tmp_path / "m.json",
        cache_dir=None,
        progress=False,
    )
    assert manifest["labelled"] == 2 and manifest["categories"] == {"unknown": 2}
    sent = server.requests[0]["user_text"]
    assert "category is not known" in sent
    assert all(
        f"Policy {p} (" in sent
        for p in ("illegal", "violent", "hate", "selfharm", "privacy", "erotic")
    )
