"""``beagle demo``: the library function on a tiny target + random draft, the CLI around it, the missing-draft message."""

from __future__ import annotations

import json

import pytest

from conftest_serving import one_torch_thread, save_tiny_target, small_tree, tiny_draft, tiny_target

PROMPTS = ["hello world how are you", "the people of the water"]


def test_run_demo_reports_agreement_for_every_prompt():
    from beagle.serving.demo import format_overall, format_question, run_demo

    seen = []
    with one_torch_thread():
        target = tiny_target()
        results = run_demo(target, tiny_draft(target), PROMPTS, max_new_tokens=24, tree=small_tree(),
                           on_result=lambda index, result: seen.append(index))
    assert seen == [0, 1]
    assert [q["agree"] for q in results["questions"]] == [True, True]
    overall = results["overall"]
    assert overall["agree"] is True and overall["agreed"] == 2 and overall["questions"] == 2
    assert overall["plain_tokens"] == overall["beagle_tokens"] == 48
    assert overall["plain_tokens_per_s"] > 0 and overall["beagle_tokens_per_s"] > 0 and overall["speedup"] > 0
    assert overall["tau"] >= 1.0
    for question in results["questions"]:
        assert question["beagle"]["tau"] >= 1.0 and question["answer"]
    assert results["tree"] == {"depth": 3, "top_k": 4, "total_tokens": 10}
    json.dumps(results)  # plain data
    assert "identical output: yes" in format_question(0, 2, results["questions"][0], "writing")
    assert "2/2" in format_overall(results)


def test_missing_shipped_draft_explains_how_to_train(monkeypatch):
    import beagle.assets.shipped as shipped
    from beagle.errors import BeagleError
    from beagle.serving.demo import DEMO_DRAFT, demo_draft_path

    monkeypatch.setattr(shipped, "shipped_draft_path", lambda name: None)
    with pytest.raises(BeagleError) as error:
        demo_draft_path(DEMO_DRAFT)
    message = str(error.value)
    assert "not in this checkout" in message and "beagle train" in message and "--draft" in message
    with pytest.raises(BeagleError, match="neither a shipped draft"):
        demo_draft_path("/no/such/folder")


def test_cli_demo_without_shipped_draft_fails_cleanly(monkeypatch, capsys):
    import beagle.assets.shipped as shipped
    from beagle.cli.main import main

    monkeypatch.setattr(shipped, "shipped_draft_path", lambda name: None)
    assert main(["demo"]) == 2
    assert "not in this checkout" in capsys.readouterr().err


def test_cli_demo_on_a_tiny_target(tmp_path, monkeypatch, capsys):
    import beagle.serving.demo as demo
    from beagle.cli.main import main
    from beagle.models.checkpoint import save_draft

    folder = save_tiny_target(tmp_path / "target")
    with one_torch_thread():
        save_draft(tiny_draft(tiny_target()), tmp_path / "draft")
    monkeypatch.setattr(demo, "mt_bench_prompts",
                        lambda count: [{"prompt": p, "category": "test"} for p in PROMPTS][:count])
    with one_torch_thread():
        code = main(["demo", "--target", folder, "--draft", str(tmp_path / "draft"), "--device", "cpu",
                     "--questions", "2", "--max-new-tokens", "12", "--depth", "3", "--tree-top-k", "4",
                     "--total-tokens", "10"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("identical output: yes") == 2
    assert "[1/2] test: hello world" in out and "Overall (2 questions" in out and "Example answer" in out
