"""The one plugin contract: options (types, coercion, messages), check_plugin on every bundled plugin
and on broken ones, plugins by name / file / module from any folder, and ``driftkit plugins NAME``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import driftkit
from driftkit import registry
from driftkit.cli.main import app
from driftkit.errors import DriftkitError
from driftkit.registry.options import Option
from driftkit.testing import PluginCheckError, check_plugin

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


# -- every bundled plugin meets the contract --------------------------------------------------------
@pytest.mark.parametrize("info", registry.all_plugins(), ids=lambda i: f"{i.kind}:{i.name}")
def test_bundled_plugin_meets_contract(info) -> None:
    check_plugin(registry.load(info.kind, info.name))


def test_bundled_options_are_documented() -> None:
    for info in registry.all_plugins():
        if info.source != "bundled":
            continue
        for name, opt in registry.load(info.kind, info.name).options.items():
            assert isinstance(opt, Option) and opt.help, f"{info.kind} {info.name}: option {name} has no help"


def test_example_probe_meets_contract() -> None:
    from driftkit.probes.examples.attn_head import AttnHeadProbe

    check_plugin(AttnHeadProbe)


# -- broken plugins: every failure listed, each in words a plugin author can act on ----------------
def _failures(cls) -> list[str]:
    with pytest.raises(PluginCheckError) as info:
        check_plugin(cls)
    assert isinstance(info.value, AssertionError) and isinstance(info.value, DriftkitError)
    assert all(f in str(info.value) for f in info.value.failures)
    return info.value.failures


def test_check_plugin_lists_every_failure_of_an_analysis() -> None:
    class NoName(driftkit.Analysis):  # no name, no description, no run()
        pass

    text = " | ".join(_failures(NoName))
    assert "'name' is not set" in text and "'description' is empty" in text and "run" in text


def test_check_plugin_catches_bad_option_declarations() -> None:
    class BadOptions(driftkit.Probe):
        name = "bad_options"
        description = "options that contradict themselves"
        options = {
            "mode": Option("fast", "how", choices=("slow", "exact")),  # default not among choices
            "layers": Option(["a,b"], "a list whose item holds the separator"),  # cannot round-trip
        }

        def sites(self, layout):
            return []

    text = " | ".join(_failures(BadOptions))
    assert "default 'fast' is not among its choices" in text
    assert "option 'layers'" in text and "reads back as" in text


def test_check_plugin_catches_swallowed_options_and_bad_names() -> None:
    class Swallow(driftkit.Trainer):
        name = "my-trainer"  # not an identifier
        description = "accepts anything"

        def __init__(self, **options):  # never calls super().__init__: no validation
            self.options_given = options

        def train(self, ctx):
            raise NotImplementedError

    text = " | ".join(_failures(Swallow))
    assert "not a valid identifier" in text
    assert "unknown option was accepted silently" in text
    assert "self.opts must hold every declared option" in text


def test_check_plugin_catches_benchmark_problems() -> None:
    class Bad(driftkit.Benchmark):
        name = "bad_bench"
        description = "no data, unknown domain"
        domain = "maths"

        def build_prompt(self, item):
            return [{"role": "user", "content": item["q"]}]

    text = " | ".join(_failures(Bad))
    assert "score" in text and "domain 'maths'" in text and "fixture" in text


def test_check_plugin_rejects_non_plugins() -> None:
    with pytest.raises(PluginCheckError, match="derives from none"):
        check_plugin(dict)
    with pytest.raises(PluginCheckError, match="not an instance"):
        check_plugin(registry.load("analysis", "kl")())


# -- the option system ------------------------------------------------------------------------------
class _Demo(driftkit.Analysis):
    name = "demo_opts"
    description = "option coercion"
    options = {
        "flag": Option(False, "a switch"),
        "n": Option(3, "a count"),
        "scale": Option(1.0, "a factor"),
        "unit": Option("token", "what one observation is", choices=("token", "sample")),
        "cols": Option({}, "renames", type=dict),
        "names": Option([], "a list", type=list),
        "maybe": Option(None, "optional number", type=int),
        "legacy": 7,  # a plain default: Option(7, help="")
    }

    def run(self, pair):
        return {}


def test_strings_are_coerced_to_declared_types() -> None:
    a = _Demo(flag="yes", n="5", scale="0.5", unit="sample", cols="a=b,c=d", names="x, y", maybe="", legacy="8")
    assert a.opts == {
        "flag": True,
        "n": 5,
        "scale": 0.5,
        "unit": "sample",
        "cols": {"a": "b", "c": "d"},
        "names": ["x", "y"],
        "maybe": None,
        "legacy": 8,
    }
    assert _Demo(flag="off", n=4.0, maybe="2").opts["flag"] is False
    assert _Demo(n=4.0).opts["n"] == 4 and _Demo(maybe="2").opts["maybe"] == 2
    assert _Demo(n=None).opts["n"] == 3  # None means "not given"
    check_plugin(_Demo)


@pytest.mark.parametrize(
    "given, needle",
    [
        (
            {"flag": "maybe"},
            "Option 'flag' of analysis 'demo_opts' takes a bool (true/false, yes/no, on/off or 1/0), got 'maybe'. a "
            "switch",
        ),
        ({"n": "2.5"}, "takes an int (a whole number), got '2.5'"),
        ({"n": 2.5}, "takes an int"),
        ({"n": True}, "takes an int"),
        ({"scale": "big"}, "takes a float (a number), got 'big'"),
        ({"unit": "smaple"}, "must be one of token, sample; got 'smaple' (did you mean 'sample'?)"),
        ({"cols": "a"}, "takes a dict (name=value pairs separated by commas)"),
        ({"scael": 1}, "Analysis 'demo_opts' has no option 'scael' (did you mean 'scale'?). Its options are: flag, n,"),
        ({"zzz": 1}, "See 'driftkit plugins demo_opts'"),
    ],
)
def test_bad_values_name_plugin_option_value_and_type(given, needle) -> None:
    with pytest.raises(DriftkitError) as info:
        _Demo(**given)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)  # one paragraph


def test_dashes_and_inheritance_and_legacy_forms() -> None:
    class Child(_Demo):
        name = "child_opts"
        options = {"n": Option(10, "a bigger count"), "extra": Option("x", "new")}

    assert list(Child.options)[:2] == ["flag", "n"] and Child.options["n"].default == 10
    assert Child(extra="y").opts["extra"] == "y" and Child().opts["scale"] == 1.0

    class OldTrainer(driftkit.Trainer):
        name = "old_trainer"
        description = "former option_specs form"
        option_specs = (Option.named("alpha", 0.5, "a weight"),)

        def train(self, ctx):
            raise NotImplementedError

    t = OldTrainer(**{"save-steps": "2", "alpha": "0.25"})
    assert t.config["save_steps"] == 2 and t.config["alpha"] == 0.25 and t.opts is t.config
    check_plugin(OldTrainer)
    with pytest.raises(TypeError, match="Option.named"):
        Option("alpha", 0.5, "a weight")  # the former positional form says what to write now


def test_option_format_round_trips_and_describe_is_json() -> None:
    for opt in _Demo.options.values():
        values = [opt.default] + list(opt.choices or ())
        for v in values:
            assert opt.coerce(opt.format(v)) == v
    desc = _Demo.describe_options()
    json.dumps(desc)
    unit = next(d for d in desc if d["name"] == "unit")
    assert unit == {
        "name": "unit",
        "type": "str",
        "default": "token",
        "choices": ["token", "sample"],
        "help": "what one observation is",
    }


def test_benchmark_base_options() -> None:
    from driftkit.plugins.benchmarks.math500 import Math500

    b = Math500(seed="3", max_new_tokens="64", samples_per_item=2)
    assert (b.seed, b.max_new_tokens, b.samples_per_item, b.revision) == (3, 64, 2, None)
    assert Math500().max_new_tokens == Math500.max_new_tokens
    with pytest.raises(DriftkitError, match="has no option 'temperatur'"):
        Math500(temperatur=0.5)
    # the prompt hash depends on the plugin's own options only (unchanged for bundled ones)
    assert Math500(seed=1).prompt_template_sha256() == Math500(seed=2).prompt_template_sha256()


# -- plugins by name, file or module, from any folder ----------------------------------------------
PROBE_FILE = """
from driftkit import Option, Probe, Site


class EmbedOnly(Probe):
    name = "embed_only_test"
    description = "the embedding output"
    options = {"tag": Option("e", "a suffix")}

    def sites(self, layout):
        return [Site(f"sites/embed_{self.opts['tag']}", layout.embed)]
"""


def test_probe_by_module_path_and_name_from_any_folder(tmp_path: Path, monkeypatch) -> None:
    from driftkit.probes.examples.attn_head import AttnHeadProbe

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert registry.load("probe", "driftkit.probes.examples.attn_head:AttnHeadProbe") is AttnHeadProbe
    # the documented source-tree path works outside the repository root too
    documented = registry.load("probe", "probes/examples/attn_head.py:AttnHeadProbe")
    assert documented.name == "attn_head"
    (tmp_path / "mine.py").write_text(PROBE_FILE)
    rel = registry.load("probe", "../mine.py:EmbedOnly")
    absolute = registry.load("probe", f"{tmp_path / 'mine.py'}:EmbedOnly")
    assert rel is absolute  # one file, one module: the class is the same object
    assert registry.load("probe", "embed_only_test") is rel  # selectable by its name afterwards
    assert registry.load("probe", "attn_head").name == "attn_head"


def test_load_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(PROBE_FILE)
    with pytest.raises(DriftkitError, match="does not exist"):
        registry.load("probe", str(tmp_path / "nope.py") + ":X")
    with pytest.raises(DriftkitError, match="has no 'Missing'. It defines: .*EmbedOnly"):
        registry.load("probe", f"{tmp_path / 'mine.py'}:Missing")
    with pytest.raises(DriftkitError, match="is not an Analysis subclass"):
        registry.load("analysis", f"{tmp_path / 'mine.py'}:EmbedOnly")
    with pytest.raises(DriftkitError, match="did you mean 'residual'"):
        registry.load("probe", "residal")
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(DriftkitError, match="Importing the probe plugin file .*boom"):
        registry.load("probe", f"{tmp_path / 'broken.py'}:X")


def test_capture_with_module_probe_then_by_name(
    tiny_model: Path, tiny_prompts: Path, tmp_path: Path, monkeypatch
) -> None:
    from driftkit.capturing import CaptureConfig, capture
    from driftkit.store.reader import CaptureReader

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text(PROBE_FILE)
    out = capture(
        CaptureConfig(
            model=str(tiny_model),
            prompts=str(tiny_prompts),
            out=tmp_path / "h.h5",
            probes=["driftkit.probes.examples.attn_head:AttnHeadProbe", "mine.py:EmbedOnly"],
            probe_options={"layer": "-1", "head": "1", "tag": "x"},
        )
    )
    with CaptureReader(out) as r:
        assert set(r.sites()) == {"attn_head.3.1", "embed_x"}
    out2 = capture(
        CaptureConfig(
            model=str(tiny_model), prompts=str(tiny_prompts), out=tmp_path / "h2.h5", probes=["embed_only_test"]
        )
    )
    with CaptureReader(out2) as r:
        assert r.sites() == ["embed_e"]


def test_reward_function_uses_the_same_importer(tmp_path: Path) -> None:
    from driftkit.plugins.trainers.rl import load_function

    (tmp_path / "rw.py").write_text(
        "def reward(prompts, completions, answer, **kw):\n    return [1.0] * len(completions)\n"
    )
    assert load_function(f"{tmp_path / 'rw.py'}:reward")([], ["a"], []) == [1.0]
    assert load_function("driftkit.plugins.trainers.rewards:math_accuracy_reward").__name__ == "math_accuracy_reward"
    with pytest.raises(DriftkitError, match="has no 'nope'"):
        load_function(f"{tmp_path / 'rw.py'}:nope")


# -- driftkit plugins [NAME] ------------------------------------------------------------------------
def test_plugins_name_shows_options_table() -> None:
    r = runner.invoke(app, ["plugins", "cka"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "cka (analysis, bundled" in text and "unit" in text and "token, sample" in text and "cross_layer" in text
    r = runner.invoke(app, ["plugins", "cka", "--json"])
    row = json.loads(r.stdout)
    assert row["kind"] == "analysis" and row["options"]["unit"]["choices"] == ["token", "sample"]
    assert row["options"]["cross_layer"] == {
        "name": "cross_layer",
        "type": "bool",
        "default": False,
        "choices": None,
        "help": row["options"]["cross_layer"]["help"],
    }


def test_plugins_name_for_a_file_and_bracketed_text(tmp_path: Path) -> None:
    f = tmp_path / "brackets.py"
    f.write_text(
        textwrap.dedent("""
        from driftkit import Analysis, Option

        class Brackets(Analysis):
            name = "brackets"
            description = "reads [bold]final/hidden[/] and [[rule]] literally"
            options = {"mode": Option("a", "either [a] or [b]", choices=("a", "b"))}

            def run(self, pair):
                return {}
    """)
    )
    r = runner.invoke(app, ["plugins", f"{f}:Brackets"])
    assert r.exit_code == 0, r.output
    assert "[bold]final/hidden[/]" in r.output and "[[rule]]" in r.output and "[a] or [b]" in r.output
    row = json.loads(runner.invoke(app, ["plugins", f"{f}:Brackets", "--json"]).stdout)
    assert row["source"] == "file" and row["kind"] == "analysis"
    r = runner.invoke(app, ["plugins", "ckaa"])
    assert r.exit_code == 1 and "did you mean 'cka'" in r.output
    r = runner.invoke(app, ["plugins", "cka", "--kind", "probe"])
    assert r.exit_code == 1
