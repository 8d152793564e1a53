"""``driftkit compare --jobs N``: the layers pass of the compare engine spread over N processes.

Why processes: each layer of each capture is read, decoded from float16 and reduced (CKA's d x d
moments, PCA's per-sample means) independently of every other layer, so the layers pass is
embarrassingly parallel; threads would contend for the GIL in h5py and numpy glue.

How it works:

- An analysis opts in with the hook pair :meth:`Analysis.layer_state` /
  :meth:`Analysis.load_layer_state` (CKA and the PCA shift do). The others run in the main process
  meanwhile, with a note in the pair's ``notes``.
- Workers are *spawned* (fresh interpreters: no inherited HDF5 handles, threads or locks). Each
  opens both captures by path, builds the same :class:`CapturePair` (same ``CompareOptions``) and
  fresh instances of the analyses (same class, same options), calls ``start(pair)`` once, then takes
  layers one at a time: :func:`driftkit.comparing.engine.one_layer` (the very code of the
  one-process pass, same chunks, so the same floats) and ``layer_state(layer)``.
- The main process loads the states in the order the one-process pass would have finished the
  layers, so ``finish(pair)`` sees exactly what it sees with ``--jobs 1``: the JSON is identical.
- Only our own in-memory objects cross the process boundary (multiprocessing pipes); nothing is
  unpickled from a file.

Memory: each worker holds what one process holds with ``--jobs 1`` (a chunk of rows per capture and
the analyses' O(d^2) accumulators, independent of the token count), so the total is at most N times
that. Each worker runs torch on as many threads as the main process (see :func:`worker_threads`).
"""

from __future__ import annotations

import importlib
import multiprocessing
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

import torch

from driftkit.comparing.engine import LAYERS, _Clock, _layers_pass, layer_sites_union, one_layer
from driftkit.errors import DriftkitError
from driftkit.registry.analysis import Analysis
from driftkit.store.buffers import BufferRing

if TYPE_CHECKING:  # pragma: no cover
    from driftkit.comparing.pair import CapturePair

Recipe = tuple[str, "str | None", str, dict[str, Any]]  # module, its file, class qualname, options


def supports_jobs(an: Analysis) -> str | None:
    """Why ``an`` cannot run its layers in a worker (None when it can)."""
    if type(an).layer_state is Analysis.layer_state:
        return "it implements no layer_state/load_layer_state hooks"
    cls = type(an)
    if "<locals>" in cls.__qualname__:
        return "its class is defined inside a function, so a worker process cannot import it"
    try:
        pickle.dumps(_recipe(an))
    except Exception as exc:  # noqa: BLE001 - any pickling failure means: run it here
        return f"its options cannot be sent to a worker ({exc})"
    return None


def _recipe(an: Analysis) -> Recipe:
    """How a worker builds its own instance: the class by module (or by file, for a ``file.py:Class``
    plugin whose module name exists only in this process) and the resolved options."""
    cls = type(an)
    mod = sys.modules.get(cls.__module__)
    return (cls.__module__, getattr(mod, "__file__", None), cls.__qualname__, dict(an.opts))


def _rebuild(recipe: Recipe) -> Analysis:
    from driftkit.registry.imports import import_file

    module_name, file, qualname, opts = recipe
    try:
        mod: Any = importlib.import_module(module_name)
    except ImportError:
        if file is None:
            raise
        mod = import_file(file, "analysis plugin")
    obj: Any = mod
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj(**opts)


def worker_threads() -> int:
    """Torch threads per worker: as many as this process uses, on purpose.

    Why not ``threads // N``: BLAS splits a float64 product differently over another number of
    threads, which changes the last bits of CKA's moments (measured: 1e-16 relative at d = 576), and
    ``--jobs N`` promises the numbers of ``--jobs 1`` exactly. To trade threads for processes, set
    ``OMP_NUM_THREADS`` (or ``torch.set_num_threads``) lower for both runs."""
    return torch.get_num_threads()


# -- in the worker processes ------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(spec: dict[str, Any]) -> None:
    """Once per worker: threads, the pair, the analyses and their ``start``, masks and sites."""
    from driftkit.comparing.pair import CapturePair
    from driftkit.store.reader import CaptureReader

    torch.set_num_threads(spec["threads"])
    opts = spec["options"]
    a = CaptureReader(spec["a"], allow_incomplete=opts.allow_incomplete)
    b = CaptureReader(spec["b"], allow_incomplete=opts.allow_incomplete)
    pair = CapturePair(a, b, opts, spec["label_a"], spec["label_b"])
    analyses = [_rebuild(r) for r in spec["analyses"]]
    for an in analyses:
        an.start(pair)
    _WORKER.update(
        pair=pair,
        analyses=analyses,
        masks={an.name: an.layers_mask(pair) for an in analyses},
        wanted={an.name: list(an.layer_sites(pair)) for an in analyses},
        buffers=BufferRing(1),  # the worker's chunk buffers, for every layer it takes
    )


def _run_layer(layer: int | str, path: str) -> tuple[dict[str, Any], dict[str, float], float]:
    """One layer in a worker: ``(states by analysis, own seconds by analysis, read seconds)``."""
    w = _WORKER
    cons = [an for an in w["analyses"] if (layer, path) in w["wanted"][an.name]]
    clock, read = _Clock(), [0.0]
    one_layer(w["pair"], layer, path, cons, w["masks"], clock, read, buffers=w["buffers"])
    states = {an.name: an.layer_state(layer) for an in cons}
    return states, clock.own, read[0]


# -- in the main process ----------------------------------------------------------------------------
def layers_pass_jobs(pair: CapturePair, consumers: list[Analysis], clock: _Clock, jobs: int) -> None:
    """The layers pass over ``jobs`` worker processes (see the module docstring)."""
    if jobs < 1:
        raise DriftkitError(f"--jobs must be at least 1, got {jobs}.")
    why = {an.name: supports_jobs(an) for an in consumers}
    movable = [an for an in consumers if why[an.name] is None]
    local = [an for an in consumers if why[an.name] is not None]
    for an in local:
        pair.notes.append(f"--jobs {jobs}: {an.name} ran its layers in the main process: {why[an.name]}")
    if not movable:
        _layers_pass(pair, local, clock)
        return
    wanted = {an.name: list(clock.call(an, an.layer_sites, pair)) for an in consumers}
    # the order of the one-process pass (over every consumer), kept for the layers workers compute
    order = layer_sites_union(consumers, wanted)
    mine = {s for an in movable for s in wanted[an.name]}
    sites = [s for s in order if s in mine]
    n = min(jobs, len(sites))
    spec = {
        "a": str(pair.a.path),
        "b": str(pair.b.path),
        "options": pair.options,
        "label_a": pair.label_a,
        "label_b": pair.label_b,
        "analyses": [_recipe(an) for an in movable],
        "threads": worker_threads(),
    }
    names = ", ".join(an.name for an in movable)
    pool = ProcessPoolExecutor(
        n, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(spec,)
    )
    read = 0.0
    try:
        futures = [pool.submit(_run_layer, layer, path) for layer, path in sites]
        if local:  # meanwhile, here
            _layers_pass(pair, local, clock)
        for i, ((layer, _path), fut) in enumerate(zip(sites, futures)):
            try:
                states, own, secs = fut.result()
            except BrokenProcessPool as exc:
                raise DriftkitError(
                    f"A --jobs worker process died while comparing {pair.a.path} and {pair.b.path} ({exc}); most "
                    "often it ran out of memory. Rerun with fewer --jobs (or --jobs 1)."
                ) from exc
            for an in movable:
                if an.name in states:
                    clock.call(an, an.load_layer_state, layer, states[an.name])
            for name, s in own.items():
                clock.own[name] = clock.own.get(name, 0.0) + s
            read += secs
            pair.progress(f"layers ({names}, {n} jobs)", i + 1, len(sites))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    clock.shared[LAYERS] = clock.shared.get(LAYERS, 0.0) + read
    clock.sharers[LAYERS] = [an.name for an in consumers]
