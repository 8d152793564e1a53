"""Import lm-evaluation-harness results as ``driftkit.scores/1`` records.

lm-eval writes, per run, ``<output_path>/<model>/results_<timestamp>.json`` with
``results.<task>["<metric>,<filter>"]`` (fractions), ``"<metric>_stderr,<filter>"``,
``n-samples.<task>.effective``, ``n-shot``, ``versions``, ``config`` (model, model_args, limit,
gen_kwargs, ...) and, with ``--log_samples``, ``samples_<task>_<timestamp>.jsonl`` (one line per
document: doc_id, filter, resps, filtered_resps, target and the per-document metric values).

The task -> benchmark mapping is a TOML table of rules (``lm_eval_map.toml`` bundled with the
benchmark plugins covers the paper's benchmarks); users add rules with their own TOML file, tried
first. Why rules with globs rather than a fixed dict: lm-eval task names vary by version and
variant (``gpqa_diamond_cot_zeroshot``, ``gpqa_diamond_generative_n_shot``, ...).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftkit.errors import DriftkitError
from driftkit.parsing import iter_jsonl, loads_toml, parse_kv

DOMAINS = ("math", "other", "non")


@dataclass(frozen=True)
class Rule:
    task: str
    metric: str
    filter: str
    benchmark: str
    domain: str
    metric_name: str | None
    primary: bool
    scale: float

    def matches(self, task: str, metric: str, flt: str) -> bool:
        return (
            fnmatch.fnmatchcase(task, self.task)
            and fnmatch.fnmatchcase(metric, self.metric)
            and fnmatch.fnmatchcase(flt, self.filter)
        )


def _parse_rules(text: str, where: str) -> list[Rule]:
    doc = loads_toml(text, f"The lm-eval mapping {where}")
    rules = []
    for i, r in enumerate(doc.get("rule", [])):
        missing = [k for k in ("task", "metric", "benchmark", "domain") if k not in r]
        if missing:
            raise DriftkitError(
                f"{where}: rule {i + 1} lacks {', '.join(missing)}; each [[rule]] needs task, metric, benchmark and "
                "domain."
            )
        if r["domain"] not in DOMAINS:
            raise DriftkitError(f"{where}: rule {i + 1} has domain {r['domain']!r}; use one of {', '.join(DOMAINS)}.")
        rules.append(
            Rule(
                task=str(r["task"]),
                metric=str(r["metric"]),
                filter=str(r.get("filter", "*")),
                benchmark=str(r["benchmark"]),
                domain=str(r["domain"]),
                metric_name=r.get("metric_name"),
                primary=bool(r.get("primary", False)),
                scale=float(r.get("scale", 100.0)),
            )
        )
    return rules


def default_rules() -> list[Rule]:
    """The bundled mapping, ``lm_eval_map.toml`` beside this module."""
    path = Path(__file__).with_name("lm_eval_map.toml")
    if not path.is_file():
        return []
    return _parse_rules(path.read_text(encoding="utf-8"), "bundled lm_eval_map.toml")


def load_rules(user_map: str | Path | None = None) -> list[Rule]:
    rules: list[Rule] = []
    if user_map is not None:
        p = Path(user_map)
        if not p.is_file():
            raise DriftkitError(f"The lm-eval mapping file {p} does not exist.")
        rules += _parse_rules(p.read_text(encoding="utf-8"), str(p))
    return rules + default_rules()


def _results_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DriftkitError(f"{path} does not exist; give lm-eval's --output_path folder or one results_*.json file.")
    files = sorted(path.rglob("results_*.json"))
    if not files:
        raise DriftkitError(f"No results_*.json under {path}; is this an lm-evaluation-harness --output_path folder?")
    return files


def _model_name(doc: dict[str, Any]) -> str | None:
    if doc.get("model_name"):
        return str(doc["model_name"])
    args = (doc.get("config") or {}).get("model_args") or ""
    if isinstance(args, dict):
        return args.get("pretrained") or args.get("model")
    try:  # lm-eval's own "pretrained=x,dtype=y" string; anything else names no model
        pairs = parse_kv(str(args), what="model_args", example="pretrained=MODEL", allow_empty=True)
    except DriftkitError:
        return None
    return pairs.get("pretrained") or pairs.get("model")


def _samples_for(results_file: Path, task: str) -> Path | None:
    stamp = results_file.stem.removeprefix("results_")
    cand = results_file.with_name(f"samples_{task}_{stamp}.jsonl")
    if cand.is_file():
        return cand
    found = sorted(results_file.parent.glob(f"samples_{task}_*.jsonl"))
    return found[-1] if found else None


_Latest = dict[str, tuple[Path, dict[str, Any], dict[str, Any]]]  # task -> (file, task results, whole doc)
_Acc = dict[tuple[str, str], list[tuple[str, float, "float | None", int]]]  # (benchmark, metric) -> rows


def _read_results(files: list[Path]) -> tuple[_Latest, set[str]]:
    """The latest results of each task (files sorted by name = by timestamp: later runs replace
    earlier ones; group aggregates skipped) and the model names the files give."""
    latest: _Latest = {}
    names = set()
    for f in files:
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DriftkitError(f"{f} is not valid JSON ({exc}).") from exc
        if not isinstance(doc.get("results"), dict):
            raise DriftkitError(f"{f} has no 'results' object; it is not an lm-evaluation-harness results file.")
        groups = {g for g, subs in (doc.get("group_subtasks") or {}).items() if subs} | set(doc.get("groups") or {})
        for task, res in doc["results"].items():
            if task in groups:
                continue  # a group's aggregate: its subtasks are mapped themselves
            latest[task] = (f, res, doc)
        if (n := _model_name(doc)) is not None:
            names.add(n)
    return latest, names


def _map_tasks(
    latest: _Latest, rules: list[Rule]
) -> tuple[_Acc, dict[tuple[str, str], Rule], dict[str, list[tuple[str, str, str]]], list[str]]:
    """Each task's metrics through the first matching rule: per (benchmark, metric) the rows
    ``(task, value, stderr, n)``, the rule, the (task, metric, filter) used per benchmark, and the
    tasks no rule matched."""
    acc: _Acc = {}
    meta: dict[tuple[str, str], Rule] = {}
    used: dict[str, list[tuple[str, str, str]]] = {}
    unmapped: list[str] = []
    for task, (_, res, doc) in sorted(latest.items()):
        mapped = False
        n_eff = ((doc.get("n-samples") or {}).get(task) or {}).get("effective")
        for key, val in res.items():
            if "," not in key or "_stderr" in key.split(",")[0]:
                continue
            metric, _, flt = key.partition(",")
            if not isinstance(val, (int, float)) or isinstance(val, bool) or not math.isfinite(val):
                continue
            rule = next((r for r in rules if r.matches(task, metric, flt)), None)
            if rule is None:
                continue
            name = rule.metric_name or (
                "accuracy" if rule.primary and rule.metric in ("exact_match", "acc") else metric
            )
            se = res.get(f"{metric}_stderr,{flt}")
            se = float(se) * rule.scale if isinstance(se, (int, float)) and math.isfinite(se) else None
            k = (rule.benchmark, name)
            if any(t == task for t, *_ in acc.get(k, [])):
                continue  # the same task's metric under a second filter: the first rule's filter wins
            acc.setdefault(k, []).append((task, float(val) * rule.scale, se, int(n_eff) if n_eff is not None else 0))
            meta[k] = rule
            used.setdefault(rule.benchmark, []).append((task, metric, flt))
            mapped = True
        if not mapped:
            unmapped.append(task)
    return acc, meta, used, unmapped


def _score_records(acc: _Acc, meta: dict[tuple[str, str], Rule]) -> list[dict[str, Any]]:
    """Score records: tasks mapped to one (benchmark, metric) macro-averaged; one primary per benchmark."""
    scores: list[dict[str, Any]] = []
    for (bench, name), rows in acc.items():
        rule = meta[(bench, name)]
        vals = [v for _, v, _, _ in rows]
        ses = [s for _, _, s, _ in rows]
        value = sum(vals) / len(vals)  # macro average over subtasks
        stderr = (math.sqrt(sum(s * s for s in ses)) / len(ses)) if all(s is not None for s in ses) else None
        rec = {
            "benchmark": bench,
            "domain": rule.domain,
            "metric": name,
            "value": min(100.0, max(0.0, value)),
            "n": sum(n for *_, n in rows),
            "stderr": stderr,
        }
        if rule.primary:
            rec["primary"] = True
        scores.append(rec)
    seen: set[str] = set()  # one primary per benchmark: keep the first flagged one
    for rec in scores:
        if rec.get("primary"):
            if rec["benchmark"] in seen:
                del rec["primary"]
            seen.add(rec["benchmark"])
    return scores


def _items_of(bench: str, task: str, samples_file: Path) -> list[dict[str, Any]]:
    """Per-item records of one task from lm-eval's ``samples_<task>_*.jsonl``."""
    items = []
    for _, s in iter_jsonl(samples_file, "lm-eval samples file"):
        metrics = {m: s[m] for m in (s.get("metrics") or []) if m in s}
        resp = s.get("filtered_resps")
        output = resp[0] if isinstance(resp, list) and resp else resp
        items.append(
            {
                "benchmark": bench,
                "id": f"{task}/{s.get('doc_id')}",
                "config": task,
                "samples": [{"output": output, "filter": s.get("filter"), "target": s.get("target"), **metrics}],
            }
        )
    return items


def _bench_provenance(
    latest: _Latest, used: dict[str, list[tuple[str, str, str]]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per benchmark: the tasks, metrics, versions and shots it came from; and the per-item records."""
    bench_prov: dict[str, Any] = {}
    items: list[dict[str, Any]] = []
    for bench, triples in used.items():
        tasks = sorted({t for t, _, _ in triples})
        docs = {t: latest[t][2] for t in tasks}
        bench_prov[bench] = {
            "source": "lm-eval",
            "tasks": tasks,
            "metrics": sorted({f"{m},{fl}" for _, m, fl in triples}),
            "versions": {t: (docs[t].get("versions") or {}).get(t) for t in tasks},
            "n_shot": {t: (docs[t].get("n-shot") or {}).get(t) for t in tasks},
            "n_samples": {t: (docs[t].get("n-samples") or {}).get(t) for t in tasks},
            "limit": {t: (docs[t].get("config") or {}).get("limit") for t in tasks},
        }
        for t in tasks:
            sp = _samples_for(latest[t][0], t)
            if sp is not None:
                items.extend(_items_of(bench, t, sp))
    return bench_prov, items


def import_lm_eval(
    path: str | Path, model: str | None = None, user_map: str | Path | None = None
) -> tuple[str, list[dict[str, Any]], dict[str, Any], list[dict[str, Any]], list[str]]:
    """Read lm-eval output at ``path`` -> (model name, score records, provenance, per-item records, unmapped tasks)."""
    files = _results_files(Path(path))
    latest, names = _read_results(files)
    if model is None:
        if len(names) > 1:
            raise DriftkitError(
                f"The lm-eval results under {path} are for several models ({', '.join(sorted(names))}); import one "
                f"model's folder, or name it with --model."
            )
        model = next(iter(names), None) or Path(path).name
    acc, meta, used, unmapped = _map_tasks(latest, load_rules(user_map))
    if not acc:
        raise DriftkitError(
            f"None of the lm-eval tasks under {path} ({', '.join(sorted(latest)) or 'none'}) matches a mapping rule. "
            "Add "
            f"[[rule]] entries for them in a TOML file and pass it with --lm-eval-map."
        )
    scores = _score_records(acc, meta)
    bench_prov, items = _bench_provenance(latest, used)
    any_doc = next(iter(latest.values()))[2]
    cfg = any_doc.get("config") or {}
    provenance = {
        "tool": "driftkit bench --import-lm-eval",
        "model": {"spec": model, "lm_eval_model_args": cfg.get("model_args")},
        "settings": {
            "source": "lm-eval",
            "gen_kwargs": cfg.get("gen_kwargs"),
            "fewshot_as_multiturn": any_doc.get("fewshot_as_multiturn"),
            "chat_template_applied": bool(any_doc.get("chat_template")),
        },
        "benchmarks": bench_prov,
        "runtime": {"lm_eval_version": any_doc.get("lm_eval_version"), "results_files": [str(p) for p in files]},
        "unmapped_tasks": unmapped,
    }
    return model, scores, provenance, items, unmapped


def import_to_file(
    path: str | Path, out: str | Path, model: str | None = None, user_map: str | Path | None = None
) -> tuple[Path, list[str]]:
    """Import lm-eval output and write a score file (+ items file when samples were logged)."""
    from driftkit.scores import write_scores

    name, scores, prov, items, unmapped = import_lm_eval(path, model, user_map)
    return write_scores(out, name, scores, prov, items if items else None), unmapped
