"""The per-token view: numbers vs a float64 softmax over the models' own logits, bounded selection,
escaping, and the page itself in headless Chromium (renders, colours match the JSON, picker works)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

import driftkit
from driftkit.plugins.analyses.token_view import MODES, TokenViewAnalysis


def _ref_samples(a: Path, model_a: Path, model_b: Path) -> dict[str, dict[str, Any]]:
    """Per sample, from the HF models themselves in float64: KL(P_B||P_A), argsort ranks, log-probs
    and A's top-3, at every position that predicts a stored token."""
    from transformers import AutoModelForCausalLM

    with h5py.File(a, "r") as f:
        off, ids = f["samples/offsets"][()], f["tokens/ids"][()]
        sid = [x.decode() if isinstance(x, bytes) else str(x) for x in f["samples/id"][()]]
        dom = [x.decode() if isinstance(x, bytes) else str(x) for x in f["samples/domain"][()]]
    ma = AutoModelForCausalLM.from_pretrained(model_a, torch_dtype=torch.float64).eval()
    mb = AutoModelForCausalLM.from_pretrained(model_b, torch_dtype=torch.float64).eval()
    out = {}
    for s in range(len(off) - 1):
        x = torch.from_numpy(ids[off[s] : off[s + 1]].astype(np.int64))[None]
        with torch.no_grad():
            lpa = torch.log_softmax(ma(x).logits[0, :-1].double(), -1)
            lpb = torch.log_softmax(mb(x).logits[0, :-1].double(), -1)
        y = x[0, 1:]
        kl = (lpb.exp() * (lpb - lpa)).sum(1)
        order_a, order_b = torch.argsort(lpa, 1, descending=True), torch.argsort(lpb, 1, descending=True)
        rank_a = (order_a == y[:, None]).int().argmax(1) + 1
        rank_b = (order_b == y[:, None]).int().argmax(1) + 1
        top_b = order_b[:, 0]
        rank_a_top_b = (order_a == top_b[:, None]).int().argmax(1) + 1
        out[sid[s]] = {
            "domain": dom[s],
            "kl": kl.numpy(),
            "rank_a": rank_a.numpy(),
            "rank_b": rank_b.numpy(),
            "rank_a_top_b": rank_a_top_b.numpy(),
            "lp_a": lpa.gather(1, y[:, None])[:, 0].numpy(),
            "lp_b": lpb.gather(1, y[:, None])[:, 0].numpy(),
            "top_p": lpa.exp().sort(1, descending=True).values[:, :3].numpy(),
        }
    return out


@pytest.fixture(scope="module")
def ref(tiny_capture_pair, tiny_model: Path, tiny_tuned: Path) -> dict[str, dict[str, Any]]:
    return _ref_samples(tiny_capture_pair[0], tiny_model, tiny_tuned)


def test_token_view_numbers_match_the_models_own_softmax(tiny_capture_pair, ref) -> None:
    a, b = tiny_capture_pair
    rep = driftkit.compare(
        [a, b], analyses=["token_view"], positions="all", options={"token_view": {"samples": 100, "max_tokens": 1000}}
    )
    res = rep.to_dict()["analyses"]["token_view"]
    assert res["summary"]["samples_shown"] == len(ref) == res["summary"]["n_samples"]
    means = [s["mean_kl"] for s in res["samples"]]
    assert means == sorted(means, reverse=True)  # the picker's order: largest drift first
    for s in res["samples"]:
        r = ref[s["sample_id"]]
        assert s["domain"] == r["domain"] and s["start"] == 0 and s["n_positions"] == len(r["kl"])
        toks = s["tokens"]
        assert len(toks) == len(r["kl"])
        np.testing.assert_allclose([t["kl"] for t in toks], r["kl"], rtol=2e-3, atol=1e-6)
        np.testing.assert_allclose(s["mean_kl"], r["kl"].mean(), rtol=1e-3)
        for key in ("rank_a", "rank_b", "rank_a_top_b"):
            assert [t[key] for t in toks] == r[key].tolist(), key
        np.testing.assert_allclose([t["lp_a"] for t in toks], r["lp_a"], rtol=2e-3, atol=1e-5)
        np.testing.assert_allclose([t["lp_b"] for t in toks], r["lp_b"], rtol=2e-3, atol=1e-5)
        np.testing.assert_allclose([[p for _, p in t["top_a"]] for t in toks], r["top_p"], rtol=2e-3, atol=1e-6)
        assert all(len(t["top_a"]) == 3 and all(isinstance(x, str) for x, _ in t["top_a"]) for t in toks)


def test_only_the_most_drifted_samples_are_kept_and_rows_are_capped(tiny_capture_pair, ref) -> None:
    a, b = tiny_capture_pair
    opts = {"samples": 2, "per_domain": 0, "max_tokens": 3}
    res = driftkit.compare([a, b], analyses=["token_view"], positions="all", options={"token_view": opts})
    res = res.to_dict()["analyses"]["token_view"]
    want = sorted(ref, key=lambda k: -ref[k]["kl"].mean())[:2]
    assert [s["sample_id"] for s in res["samples"]] == want
    for s in res["samples"]:
        assert len(s["tokens"]) == 3 and s["n_positions"] == len(ref[s["sample_id"]]["kl"])  # mean over all
    # the first sample of each domain is kept besides the most drifted ones
    opts = {"samples": 1, "per_domain": 1}
    res = driftkit.compare([a, b], analyses=["token_view"], positions="all", options={"token_view": opts})
    shown = res.to_dict()["analyses"]["token_view"]["samples"]
    firsts = {}
    for k, r in ref.items():  # ref keeps capture order
        firsts.setdefault(r["domain"], k)
    assert {s["sample_id"] for s in shown} == set(firsts.values()) | {want[0]}


def test_identical_captures_give_zero_kl_and_equal_ranks(tiny_capture_pair) -> None:
    a, _ = tiny_capture_pair
    rep = driftkit.compare([a, a], analyses=["token_view"], positions="all")
    for s in rep.to_dict()["analyses"]["token_view"]["samples"]:
        assert s["mean_kl"] == 0
        assert all(t["kl"] == 0 and t["rank_a"] == t["rank_b"] and t["lp_a"] == t["lp_b"] for t in s["tokens"])


# -- the page ---------------------------------------------------------------------------------------

EVIL = ["</script><img src=x onerror=alert(1)>", "<b>bold</b>", "a & b", "\n", " x", '"q"', "<!--"]


def _result() -> dict[str, Any]:
    """A hand-made result with hostile token text and values in every bucket of every mode."""
    rng = np.random.default_rng(0)
    samples = []
    for j, mean in enumerate((0.5, 2.0, 0.01)):
        toks = []
        for i in range(12):
            toks.append(
                {
                    "text": EVIL[(i + j) % len(EVIL)],
                    "kl": [0.0, 5e-4, 3e-3, 0.05, 0.5, 3.0, None][(i + j) % 7],
                    "rank_a": int(rng.integers(1, 9)),
                    "rank_b": int(rng.integers(1, 9)),
                    "rank_a_top_b": int(rng.integers(1, 7)),
                    "lp_a": -1.5,
                    "lp_b": -1.25,
                    "top_a": [["<i>alt</i>", 0.5], ["</script>", 0.25], [" z", 0.125]],
                }
            )
        samples.append({"sample_id": f"s{j}&<x>", "domain": "math", "mean_kl": mean, "n_positions": 12})
        samples[-1].update({"start": 0, "context": "<script>alert(2)</script> ctx", "tokens": toks})
    samples.sort(key=lambda s: -s["mean_kl"])
    return {"label_a": "base", "label_b": "tuned", "summary": {}, "samples": samples}


def _expected_bucket(mode: dict[str, Any], tok: dict[str, Any]) -> int:
    v = {
        "kl": np.inf if tok["kl"] is None else tok["kl"],
        "rank_shift": tok["rank_a"] - tok["rank_b"],
        "rank_a_top_b": tok["rank_a_top_b"],
    }[mode["value"]]
    return int(np.searchsorted(mode["edges"], v, side="right"))


class _Spans(HTMLParser):
    """The token spans of a dumped DOM: attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.box: dict[str, str] = {}
        self.spans: list[dict[str, str]] = []
        self.options: list[str] = []
        self.tags: list[str] = []
        self._in_box = self._in_span = self._in_opt = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if "dk-tv-tokens" in d.get("class", ""):
            self.box, self._in_box = d, True
        elif self._in_box and tag == "span":
            self.spans.append({**d, "text": ""})
            self._in_span = True
        elif tag == "option" and self._in_opt:
            self.options.append("")
        if tag == "select" and "dk-tv-sample" in d.get("class", ""):
            self._in_opt = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._in_span = False
        elif tag == "div":
            self._in_box = False
        elif tag == "select":
            self._in_opt = False

    def handle_data(self, data: str) -> None:
        if self._in_span and self.spans:
            self.spans[-1]["text"] += data
        elif self._in_opt and self.options:
            self.options[-1] += data


def _page(tmp_path: Path, results: dict[str, Any]) -> Path:
    body = "".join(TokenViewAnalysis().html_sections(results))
    p = tmp_path / "view.html"
    p.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{body}</body></html>")
    return p


def test_html_section_escapes_token_text(tmp_path: Path) -> None:
    html = _page(tmp_path, {"tuned": _result()}).read_text()
    data = html.split("class='dk-tv-data'>", 1)[1].split("</script>", 1)[0]
    assert "<" not in data and ">" not in data and "&" not in data.replace("\\u0026", "")
    assert json.loads(data)["models"][0]["samples"][0]["tokens"][0]["text"] in EVIL
    assert "<img" not in html and "alert(2)</script>" not in html
    assert TokenViewAnalysis().html_sections({"tuned": {"samples": []}}) == []


def _chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        pytest.skip("Chromium is not installed (apt-get install chromium); the section was checked structurally")
    return browser


def _dump(browser: str, url: str, profile: Path) -> str:
    p = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def _shown_text(text: str) -> str:
    return text.replace("\n", "\u21b5\n").replace("\t", "\u2192\t")


def test_page_renders_colours_and_picks_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    res = _result()
    page = _page(tmp_path, {"tuned": res})
    for mode in MODES:
        for pick in (None, res["samples"][2]):
            frag = f"#color={mode['key']}"
            if pick is not None:
                frag += "&sample=" + re.sub(r"[&<>]", lambda m: f"%{ord(m.group()):02X}", pick["sample_id"])
            dom = _dump(browser, page.as_uri() + frag, tmp_path / "profile")
            parsed = _Spans()
            parsed.feed(dom)
            want = pick or res["samples"][0]  # no fragment: the largest drift first
            assert parsed.box.get("data-sample") == want["sample_id"] and parsed.box["data-mode"] == mode["key"]
            assert "img" not in parsed.tags  # the hostile token text stayed text
            assert [s["text"] for s in parsed.spans] == [_shown_text(t["text"]) for t in want["tokens"]]
            for span, tok in zip(parsed.spans, want["tokens"]):
                b = _expected_bucket(mode, tok)
                assert span["data-bucket"] == str(b) and span["class"] == f"dk-b{b}"
                assert span["data-kl"] == "inf" if tok["kl"] is None else float(span["data-kl"]) == tok["kl"]
            assert len(parsed.options) == 3 and parsed.options[0].startswith(res["samples"][0]["sample_id"])
    buckets = {_expected_bucket(m, t) for m in MODES[:1] for s in res["samples"] for t in s["tokens"]}
    assert buckets == set(range(len(MODES[0]["names"])))  # every KL colour was exercised


def test_compare_html_report_carries_the_view(tiny_capture_pair, tmp_path: Path) -> None:
    a, b = tiny_capture_pair
    rep = driftkit.compare([a, b], analyses=["kl", "token_view"])
    html = rep.to_html(tmp_path / "r.html")
    assert html.count("<div class='dk-tv' data-dk-tv>") == 1 and "dk-tv-data" in html
    browser = shutil.which("chromium")
    if browser:
        parsed = _Spans()
        parsed.feed(_dump(browser, (tmp_path / "r.html").as_uri(), tmp_path / "profile"))
        first = rep.to_dict()["analyses"]["token_view"]["samples"][0]
        assert parsed.box["data-sample"] == first["sample_id"] and len(parsed.spans) == len(first["tokens"])


def test_sharing_the_logits_pass_with_kl_changes_neither(tiny_capture_pair) -> None:
    """Both overwrite the shared blocks (one gets the engine's copy): results equal running each alone."""
    a, b = tiny_capture_pair
    both = driftkit.compare([a, b], analyses=["kl", "token_rank", "token_view"], positions="all").to_dict()
    for name in ("kl", "token_view"):
        alone = driftkit.compare([a, b], analyses=[name], positions="all").to_dict()["analyses"][name]
        assert both["analyses"][name] == alone


def test_study_page_carries_the_sections() -> None:
    from driftkit.pipeline.study import Study
    from driftkit.report.study_render import render_html

    data = {"experiment": "x", "base": "b", "models": ["base", "t"], "drift_table": []}
    sections = TokenViewAnalysis().html_sections({"t": _result()})
    page = render_html(Study(data, ["a finding"], [], sections))
    assert sections and sections[0] in page
