"""Automatic compression under a budget: sensitivity, allocation, refinement, choice, test.

1. Sensitivity (``sensitivity.py``): each searchable layer alone at every technique and
   strength, scored on the val split (cached).
2. Allocation (``allocate.py``): per-layer settings of least estimated objective at several
   drop allowances around the budget ("greedy" trials), each built and measured.
3. Refinement: generations of mutants of the best trials so far (one or two layers moved one
   strength up or down, a technique added or removed), measured the same way ("refine" trials).
   Trials of a generation run in parallel (worker processes, or Ray); each is appended to
   ``DIR/trials.jsonl`` and fsynced as it finishes. A generation is drawn from the seed and the
   trials of earlier generations only, so ``resume`` regenerates the same candidates and runs
   only those the log lacks.
4. Choice (``pareto.py``): the best objective among trials that meet the budget on val; it is
   rebuilt by ``compress`` with the same recipe and measured on the test split. The run folder
   gets ``model.ncz``, ``report.json`` (the DESIGN.md report), ``sensitivity.json``,
   ``trials.jsonl`` and ``search.json``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from nncompress.core.compress import CompressionReport, compress
from nncompress.io.atomic import atomic_write_text
from nncompress.io.run import check_out_dir, write_run
from nncompress.measure.metric import evaluate
from nncompress.measure.report import MeasureConfig
from nncompress.report import render_html
from nncompress.search.allocate import Budget, allocate, check_objective, drop_of
from nncompress.search.pareto import RESOURCES, choose, objective_key, pareto_front
from nncompress.search.sensitivity import Sensitivity, analyze, write_sensitivity
from nncompress.search.space import Params, SearchSpace, canonical, params_key, recipe_for, search_layers
from nncompress.search.trials import TRIALS_NAME, Trial, append_trial, repair_log
from nncompress.search.workers import Measured, Pool, Setup, make_pool
from nncompress.tasks.task import Task

SEARCH_NAME = "search.json"
# drop allowances tried when the budget has no max_drop, as fractions of the baseline metric
DROP_LADDER = (0.0025, 0.005, 0.01, 0.02, 0.04)


@dataclass(frozen=True)
class SearchConfig:
    """How hard to search.

    Args:
        trials: candidates built and measured, allocation ones included (>= 1).
        workers: local worker processes evaluating candidates in parallel (>= 1).
        seed: seeds the refinement's draws and every step.
        space: techniques and strengths per layer (``SearchSpace``).
        drop_scales: the allocation is solved at ``max_drop`` times each of these (the summed
            single-layer drops only estimate the real one).
        generation: candidates per refinement generation (0: ``max(4, 2 * workers)``).
        elites: the best trials mutated in each generation.
        ray_address: evaluate on this Ray cluster instead of local processes (``"local"``
            starts one here).
        use_cache: read the sensitivity analysis from the cache when there.
        measure: how the chosen model's report is measured (latency timing and so on).
    """

    trials: int = 32
    workers: int = 1
    seed: int = 0
    space: SearchSpace = field(default_factory=SearchSpace)
    drop_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0)
    generation: int = 0
    elites: int = 4
    ray_address: str | None = None
    use_cache: bool = True
    measure: MeasureConfig = field(default_factory=MeasureConfig)

    def __post_init__(self) -> None:
        for name in ("trials", "workers", "elites"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.generation, bool) or not isinstance(self.generation, int) or self.generation < 0:
            raise ValueError(f"generation must be an integer >= 0 (0: automatic), got {self.generation!r}")
        if not self.drop_scales or any(not isinstance(s, (int, float)) or s <= 0 for s in self.drop_scales):
            raise ValueError(f"drop_scales must be positive numbers, got {self.drop_scales!r}")


@dataclass
class SearchResult:
    """The chosen trial, every trial, the Pareto front and the chosen model's report."""

    chosen: Trial
    trials: list[Trial]
    pareto: list[int]
    test_metric: float
    baseline_test_metric: float
    report: CompressionReport
    out_dir: Path
    summary: dict[str, Any]


class _Run:
    """One search's state: the task, the pool, the trials so far, the log file."""

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        budget: Budget,
        objective: str,
        config: SearchConfig,
        out: Path,
        pool: Pool,
        sens: Sensitivity,
        done: dict[int, Trial],
        progress: Callable[[str], None] | None,
    ) -> None:
        self.task, self.model, self.budget, self.objective, self.config = task, model, budget, objective, config
        self.out, self.pool, self.sens, self.progress = out, pool, sens, progress
        self.layers = search_layers(model)
        self.done = done  # trials read back from the log (resume)
        self.trials: dict[int, Trial] = {}

    def trial(self, trial_id: int, stage: str, params: Params, m: Measured) -> Trial:
        drop = drop_of(m.metric, self.sens.baseline_metric, self.sens.higher_is_better)
        meets = self.budget.meets(drop=drop, size_bytes=m.size_bytes, macs=m.macs, latency_ms=m.latency_ms)
        return Trial(trial_id, stage, params, m.metric, m.size_bytes, m.macs, m.latency_ms, meets, round(m.seconds, 3))

    def run_batch(self, first_id: int, stage: str, candidates: list[Params]) -> None:
        """Evaluate the candidates (ids from ``first_id``) the log lacks; log each as it finishes."""
        todo = []
        for offset, params in enumerate(candidates):
            trial_id = first_id + offset
            old = self.done.get(trial_id)
            if old is not None:
                if params_key(old.params) != params_key(params) or old.stage != stage:
                    raise ValueError(
                        f"{self.out / TRIALS_NAME} was written by a different search: trial {trial_id} has "
                        f"params {params_key(old.params)}, this search draws {params_key(params)}; "
                        "use the same task, budget, seed and settings, or another --out"
                    )
                self.trials[trial_id] = old
            else:
                todo.append((trial_id, params))
        for index, measured in self.pool.run([p for _, p in todo]):
            trial_id, params = todo[index]
            trial = self.trial(trial_id, stage, params, measured)
            append_trial(self.out / TRIALS_NAME, trial)
            self.trials[trial_id] = trial
            if self.progress:
                self.progress(
                    f"trial {trial_id} ({stage}): metric {trial.metric:.4f}, {trial.size_bytes:,} bytes, "
                    f"{'meets' if trial.meets_budget else 'misses'} the budget"
                )

    def greedy_candidates(self) -> list[Params]:
        """Allocations at each drop allowance, without repeats."""
        if self.budget.max_drop is not None:
            allowances = [self.budget.max_drop * s for s in self.config.drop_scales]
        else:
            allowances = [abs(self.sens.baseline_metric) * f for f in DROP_LADDER]
        weight_bytes = {n: 4 * self.model.get_submodule(n).weight.numel() for n in self.layers}
        out, seen = [], set()
        for allowance in allowances:
            estimate = allocate(self.sens, weight_bytes, self.budget, self.objective, max_drop=allowance)
            params = canonical(estimate.params)
            if params_key(params) not in seen:
                seen.add(params_key(params))
                out.append(params)
        return out

    def ranked(self, trials: list[Trial]) -> list[Trial]:
        """Trials meeting the budget first, by objective; then the others, least drop first."""
        hib = self.sens.higher_is_better

        def key(t: Trial) -> tuple:
            if t.meets_budget:
                return (0, *objective_key(t, self.objective, hib))
            return (1, drop_of(t.metric, self.sens.baseline_metric, hib), *objective_key(t, self.objective, hib))

        return sorted(trials, key=key)

    def refine_candidates(self, generation: int, before: list[Trial], count: int) -> list[Params]:
        """``count`` new candidates mutated from the best of ``before`` (trials of earlier generations)."""
        rng = random.Random(f"{self.config.seed}:{generation}")
        elites = self.ranked(before)[: self.config.elites]
        seen = {params_key(t.params) for t in before}
        out: list[Params] = []
        for _ in range(50 * count):
            if len(out) == count or not elites:
                break
            parent = rng.choice(elites)
            params = mutate(parent.params, self.layers, self.config.space, rng, milder=not parent.meets_budget)
            if params_key(params) not in seen:
                seen.add(params_key(params))
                out.append(params)
        return out


def mutate(
    params: Params, layers: dict[str, str | None], space: SearchSpace, rng: random.Random, *, milder: bool = False
) -> Params:
    """A neighbour of ``params``: one or two layers get a technique one strength milder or
    stronger (milder than the mildest removes it; an absent technique is added at a random level).
    ``milder``: only milder moves, to repair a candidate that misses the budget."""
    out = {layer: dict(entry) for layer, entry in params.items()}
    for _ in range(rng.choice((1, 1, 2))):
        if milder:
            applied = [(layer, t) for layer in sorted(out) for t in out[layer]]
            if not applied:
                break
            layer, technique = rng.choice(applied)
        else:
            layer = rng.choice(sorted(layers))
            technique = rng.choice([t for t in space.techniques if t != "lowrank" or layers[layer]])
        levels = space.levels(technique)
        entry = out.setdefault(layer, {})
        if technique not in entry:
            entry[technique] = levels[0] if rng.random() < 0.5 else rng.choice(levels)
            continue
        index = min(range(len(levels)), key=lambda i: abs(levels[i] - entry[technique]))
        step = -1 if milder else rng.choice((-1, 1))
        if index + step < 0:
            del entry[technique]
        else:
            entry[technique] = levels[min(index + step, len(levels) - 1)]
    return canonical(out)


def search(
    task: str | Task,
    budget: Budget,
    out_dir: str | Path,
    *,
    objective: str = "size",
    config: SearchConfig | None = None,
    model: nn.Module | None = None,
    resume: bool = False,
    data_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Find the per-layer compression with the best ``objective`` that meets ``budget`` on the
    val split; confirm it on the test split; write the run folder.

    Args:
        task: a task name (``"fmnist-resnet"``), ``"file.py:factory"``, or a Task.
        budget: limits on the metric's drop, bytes, MACs, latency.
        out_dir: the run folder (sensitivity.json, trials.jsonl, search.json, model.ncz, report.json).
        objective: ``"size"`` (artifact bytes), ``"macs"``, ``"latency"`` or ``"metric"``.
        config: trials, workers, seed, search space...
        model: the model to compress (default: the task's baseline).
        resume: continue the trials in ``out_dir/trials.jsonl`` (finished ones are not rerun).

    Example:
        >>> result = search("fmnist-resnet", Budget(max_drop=0.01), "runs/s", objective="size")  # doctest: +SKIP
        >>> result.test_metric, result.chosen.size_bytes  # doctest: +SKIP
    """
    from nncompress.tasks import get

    config = config or SearchConfig()
    check_objective(objective, budget)
    out = Path(out_dir)
    if (out / TRIALS_NAME).exists() and not resume:
        raise FileExistsError(
            f"{out} already holds {TRIALS_NAME}; pass --resume to continue that search or choose another --out"
        )
    if not resume:
        check_out_dir(out, overwrite=False)
    elif out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder; give a folder path")
    task_obj = get(task, data_dir=data_dir) if isinstance(task, str) else task
    base = (model if model is not None else task_obj.baseline()).eval()
    latency = objective == "latency" or budget.max_latency_ms is not None
    setup = Setup(task if isinstance(task, str) else task_obj, config.space, config.seed, latency, data_dir, model)
    pool = make_pool(setup, workers=config.workers, ray_address=config.ray_address)
    try:
        out.mkdir(parents=True, exist_ok=True)
        done = {t.trial: t for t in repair_log(out / TRIALS_NAME)} if resume else {}
        sens = analyze(
            pool,
            task_name=task_obj.name,
            metric_name=task_obj.metric_name,
            higher_is_better=task_obj.higher_is_better,
            model=base,
            layers=search_layers(base),
            space=config.space,
            seed=config.seed,
            use_cache=config.use_cache,
            progress=progress,
        )
        write_sensitivity(sens, out)
        run = _Run(task_obj, base, budget, objective, config, out, pool, sens, done, progress)
        greedy = run.greedy_candidates()[: config.trials]
        run.run_batch(0, "greedy", greedy)
        generation, size = 0, config.generation or max(4, 2 * config.workers)
        while len(run.trials) < config.trials:
            generation += 1
            first = len(run.trials)
            before = [run.trials[i] for i in sorted(run.trials)]
            candidates = run.refine_candidates(generation, before, min(size, config.trials - first))
            if not candidates:
                break  # the neighbourhood is exhausted
            run.run_batch(first, "refine", candidates)
    finally:
        pool.close()
    return _finish(run, task if isinstance(task, str) else task_obj.name)


def _finish(run: _Run, task_name: str) -> SearchResult:
    """Choose, rebuild with ``compress`` (test split), write model.ncz, report.json, search.json."""
    trials = [run.trials[i] for i in sorted(run.trials)]
    hib = run.sens.higher_is_better
    chosen = choose(trials, run.objective, hib)
    if chosen is None:
        raise ValueError(
            f"none of the {len(trials)} trials met the budget {run.budget.to_dict()} on the val split; "
            f"loosen the budget or raise --trials (trials are in {run.out / TRIALS_NAME})"
        )
    layers = search_layers(run.model)
    recipe = recipe_for(chosen.params, layers, run.config.space)
    result = compress(run.model, recipe, run.task, seed=run.config.seed, measure_config=run.config.measure)
    rebuilt_val = evaluate(result.model, run.task.val, run.task.metric_fn)
    write_run(result, run.out)
    report = result.report
    test, baseline_test = report.final.metric["value"], report.baseline.metric["value"]
    test_drop = drop_of(test, baseline_test, hib)
    resource = "size" if run.objective == "metric" else run.objective
    pareto = pareto_front(trials, resource=resource, higher_is_better=hib)
    summary = {
        "task": task_name,
        "budget": run.budget.to_dict(),
        "objective": run.objective,
        "chosen": chosen.trial,
        "pareto": pareto,
        "test_metric": test,
        "baseline_test_metric": baseline_test,
        "metric": {"name": run.sens.metric_name, "higher_is_better": hib},
        "baseline_val_metric": run.sens.baseline_metric,
        "val_metric": chosen.metric,
        "rebuilt_val_metric": rebuilt_val,
        "test_drop": test_drop,
        "meets_budget_on_test": run.budget.max_drop is None or test_drop <= run.budget.max_drop + 1e-12,
        "size_bytes": report.final.size_bytes,
        "baseline_size_bytes": report.baseline.size_bytes,
        "macs": report.final.macs,
        "params": chosen.params,
        "trials": len(trials),
        "pareto_by": {
            r: pareto_front(trials, resource=r, higher_is_better=hib)
            for r in RESOURCES
            if r != "latency" or all(t.latency_ms is not None for t in trials)
        },
        "seed": run.config.seed,
        "space": run.config.space.to_dict(),
    }
    atomic_write_text(run.out / SEARCH_NAME, json.dumps(summary, indent=2) + "\n")
    render_html(run.out)  # again, now with the search section, trials and Pareto front
    return SearchResult(chosen, trials, pareto, test, baseline_test, report, run.out, summary)
