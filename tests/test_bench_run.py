"""`driftkit bench` end to end on a tiny random model and the offline fixtures, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from driftkit.bench import decode_answer, render_prompt, run_suite
from driftkit.scores import comparability_problems, read_items, read_scores


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models generate much faster on one thread when the 2 cores are shared (no OpenMP spin)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _app():
    from driftkit.cli.main import app

    return app


@pytest.fixture(scope="module")
def suite_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "base.json"
    return run_suite(
        str(tiny_model), suite="default", limit=2, out=out, data="fixtures", max_new_tokens=6, batch_size=4
    )


def test_run_suite_writes_scores_items_and_provenance(suite_run: Path):
    doc = read_scores(suite_run)
    prim = {s["benchmark"]: s for s in doc["scores"] if s.get("primary")}
    assert set(prim) == {"math500", "gpqa", "acpbench", "humaneval", "ifeval"}
    assert {prim[b]["domain"] for b in prim} == {"math", "other", "non"}
    assert all(0 <= s["value"] <= 100 and s["n"] >= 1 for s in doc["scores"])
    prov = doc["provenance"]
    for _b, p in prov["benchmarks"].items():
        assert (
            p["source"] == "fixture"
            and p["fixture_sha256"]
            and p["prompt_template_sha256"]
            and p["max_new_tokens"] == 6
        )
        assert p["n_items"] == 2 and p["item_ids_sha256"]
    assert prov["settings"]["generation"] == {"temperature": 0.0, "top_p": 1.0, "seed": 0}
    assert "think" in prov["settings"]["think_strip_rule"]
    assert prov["model"]["weights_sha256"] and prov["model"]["tokenizer_sha256"]
    items = read_items(suite_run)
    assert len(items) == 10 and {i["benchmark"] for i in items} == set(prim)
    for it in items:
        s = it["samples"][0]
        assert 1 <= s["new_tokens"] <= 6 and "output" in s and "correct" in s
    # two runs with identical settings are comparable
    assert comparability_problems(doc, read_scores(suite_run)) == []


def test_render_prompt_chat_and_think(tiny_model: Path):
    from driftkit.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    chat = render_prompt(tok, msgs, chat_template=True, think=None)
    assert chat.startswith("<|im_start|>user") and chat.rstrip().endswith("<|im_start|>assistant")
    assert render_prompt(tok, msgs, chat_template=False, think=None) == "What is 2 + 3?\n\n"
    ids = tok("<think>5</think> it is 7", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    raw, ans = decode_answer(tok, ids)
    assert ans == "it is 7" and "<|im_end|>" not in raw


def test_cli_bench_on_fixtures(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "s.json"
    r = CliRunner().invoke(
        _app(),
        [
            "bench",
            str(tiny_model),
            "--benchmarks",
            "gpqa,ifeval",
            "--limit",
            "2",
            "--data",
            "fixtures",
            "--max-new-tokens",
            "4",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    doc = read_scores(out)
    assert {s["benchmark"] for s in doc["scores"]} == {"gpqa", "ifeval"}
    assert json.loads(r.stdout[r.stdout.index("{") :])["schema"] == "driftkit.scores/1"


def _refused(args, *needles):
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    for n in needles:
        assert n in text, (n, text)


def test_cli_bench_refusals(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "x.json"
    _refused(
        ["bench", str(tiny_model), "--benchmarks", "nope", "--out", str(out)], "Unknown benchmark 'nope'", "math500"
    )
    _refused(["bench", str(tiny_model), "--suite", "huge", "--out", str(out)], "Unknown suite")
    _refused(["bench", "--out", str(out)], "Give the model")
    _refused(
        [
            "bench",
            str(tiny_model),
            "--benchmarks",
            "math500",
            "--samples",
            "4",
            "--data",
            "fixtures",
            "--out",
            str(out),
        ],
        "--temperature",
    )
    _refused(
        ["bench", str(tiny_model), "--benchmarks", "math500", "--data", "somewhere", "--out", str(out)],
        "Unknown data source",
    )
    _refused(
        ["bench", str(tmp_path / "nomodel"), "--benchmarks", "math500", "--data", "fixtures", "--out", str(out)],
        "does not exist",
    )
    # hub requested while offline (conftest sets HF_HUB_OFFLINE): a clear error naming the fixture switch
    _refused(
        ["bench", str(tiny_model), "--benchmarks", "gpqa", "--data", "hub", "--out", str(out)],
        "Idavidrein/gpqa",
        "gated",
        "--data fixtures",
    )
    assert not out.exists()


def test_auto_data_falls_back_to_fixtures_and_says_so(tiny_model: Path, tmp_path: Path):
    notes: list[str] = []
    p = run_suite(
        str(tiny_model),
        benchmarks="math500",
        limit=1,
        out=tmp_path / "a.json",
        data="auto",
        max_new_tokens=2,
        log=notes.append,
    )
    prov = read_scores(p)["provenance"]["benchmarks"]["math500"]
    assert prov["source"] == "fixture" and "fixture" in prov["fallback"]
    assert any("fixture" in n for n in notes)


def test_user_benchmark_plugin_from_file(tiny_model: Path, tmp_path: Path):
    fixture = tmp_path / "echo.jsonl"
    fixture.write_text("\n".join(json.dumps({"id": i, "q": f"Say {i}", "a": str(i)}) for i in range(3)) + "\n")
    plugin = tmp_path / "echo_bench.py"
    plugin.write_text(
        "from pathlib import Path\n"
        "from driftkit.registry.benchmark import Benchmark\n\n"
        "class Echo(Benchmark):\n"
        "    name = 'echo'\n"
        "    domain = 'non'\n"
        f"    fixture = Path({str(fixture)!r})\n"
        "    max_new_tokens = 3\n"
        "    def build_prompt(self, item):\n"
        "        return [{'role': 'user', 'content': item['q']}]\n"
        "    def score(self, item, answer):\n"
        "        return {'correct': item['a'] in answer}\n"
    )
    out = tmp_path / "e.json"
    r = CliRunner().invoke(
        _app(), ["bench", str(tiny_model), "--benchmarks", f"{plugin}:Echo", "--data", "fixtures", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    s = read_scores(out)["scores"][0]
    assert s["benchmark"] == "echo" and s["n"] == 3 and s["domain"] == "non"


def test_think_switch_reaches_templates_that_support_it(tiny_model: Path):
    from driftkit.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
    )
    msgs = [{"role": "user", "content": "hi"}]
    assert render_prompt(tok, msgs, True, think=False).endswith("<think>\n\n</think>\n\n")
    assert "<think>" not in render_prompt(tok, msgs, True, think=True)
    assert "<think>" not in render_prompt(tok, msgs, True, think=None)


def test_vllm_backend_is_import_guarded(tiny_model: Path, tmp_path: Path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    _refused(
        [
            "bench",
            str(tiny_model),
            "--benchmarks",
            "math500",
            "--data",
            "fixtures",
            "--backend",
            "vllm",
            "--out",
            str(tmp_path / "v.json"),
        ],
        "vLLM",
        "--backend hf",
    )


def test_budget_parsing():
    from driftkit.bench import BenchSettings, load_benchmarks, parse_budget, resolve_benchmarks
    from driftkit.errors import DriftkitError

    assert parse_budget("64") == 64 and parse_budget("math500=12,ifeval=7") == {"math500": 12, "ifeval": 7}
    with pytest.raises(DriftkitError):
        parse_budget("lots")
    quick = resolve_benchmarks(None, "quick")
    bs = {b.name: b.max_new_tokens for b in load_benchmarks(quick, BenchSettings(max_new_tokens={"gpqa": 5}))}
    assert bs == {"math_heldout": quick["math_heldout"], "gpqa": 5, "ifeval": quick["ifeval"]}
    with pytest.raises(DriftkitError, match="not among"):
        load_benchmarks(quick, BenchSettings(max_new_tokens={"humaneval": 5}))


def test_greedy_benchmarks_with_one_budget_share_generate_calls(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Pooling: one generate call per token budget, and each item gets back the answer to its own prompt."""
    from driftkit.generate import HFGenerator

    calls: list[tuple[int, int]] = []

    def fake_generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, seed=0, progress=None):
        calls.append((len(prompts), max_new_tokens))
        # an answer whose length encodes its prompt's length, so a mix-up between items shows
        return [[int(p[-1])] * (len(p) % 5 + 1) for p in prompts]

    monkeypatch.setattr(HFGenerator, "generate", fake_generate)
    budgets = {"math500": 6, "gpqa": 4, "acpbench": 6, "humaneval": 9, "ifeval": 6}
    out = run_suite(
        str(tiny_model), suite="default", limit=2, out=tmp_path / "s.json", data="fixtures", max_new_tokens=budgets
    )
    assert sorted(calls) == sorted([(6, 6), (2, 4), (2, 9)])  # math500+acpbench+ifeval pooled; gpqa, humaneval alone
    items = read_items(out)
    assert len(items) == 10
    for it in items:
        assert it["samples"][0]["new_tokens"] == it["prompt_tokens"] % 5 + 1
    timing = read_scores(out)["provenance"]["timing"]
    assert (
        timing["ifeval"]["generated_with"] == ["math500", "acpbench", "ifeval"]
        and "generated_with" not in timing["gpqa"]
    )

    calls.clear()  # sampling: every benchmark alone, so its seeded samples never depend on its neighbours
    run_suite(
        str(tiny_model),
        suite="default",
        limit=2,
        out=tmp_path / "t.json",
        data="fixtures",
        max_new_tokens=budgets,
        temperature=0.7,
    )
    assert len(calls) == 5
