"""Plant deliberately wrong rules in a copy of the speculative engine and run the exact-law
check (tests/speculative_law.py) against each (issue 28, part 4): every planted rule must be
caught, the real rule must pass, and no run may hang (residual loops are capped).

The copy is made from the engine's source text with one rule changed, loaded as new modules
(``ecar.engine.speculative_rules``, ``ecar.engine.speculative_residual`` and
``ecar.engine.speculative`` under other names, each importing the copies); the real engine is
never edited. A replacement whose text is not found exactly once stops the script:
a rule planted nowhere would pass for the wrong reason.

    python tests/plant_wrong_rules.py --out benchmarks/results/speculative_planted_rules.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from speculative_law import THRESHOLD_P, draw, exact_law, law_pvalue, pair  # noqa: E402

import ecar.engine.speculative as engine  # noqa: E402
import ecar.engine.speculative_residual as residual  # noqa: E402
import ecar.engine.speculative_rules as rules  # noqa: E402

THRESHOLD = THRESHOLD_P

RULES = {
    "real rule": {},
    "residual without its weight: max(0, P - Q) instead of max(0, p_tau*P - Q)": {
        "rules": [("shift = 0.0 if log_weight is None else log_weight[rows, None].double()", "shift = 0.0")]},
    "acceptance without the min: p_i = p_(i-1)*rho_i, not min(1, ...)": {
        "rules": [("logp = sums - sums.cummax(1).values.clamp_min(0)", "logp = sums")]},
    "target mean shifted by 0.02 std in the acceptance test": {
        "rules": [("return step_log_ratio(path, p_means, q_means, stds),",
                   "return step_log_ratio(path, p_means + 0.02 * stds[:, None], q_means, stds),")]},
    "the draft's finish instead of the target's": {
        "engine": [("p_means, finished = _verify(tnet, zp, pos, chain, path)\n",
                    "p_means, finished = _verify(tnet, zp, pos, chain, path)\n"
                    "        _, finished = _verify(dnet, zq, pos, chain, path)\n"),
                   ("p_means, finished = _verify(tnet, zp, pos, chain, paths)\n",
                    "p_means, finished = _verify(tnet, zp, pos, chain, paths)\n"
                    "        _, finished = _verify(dnet, zq, pos, chain, paths)\n")]},
    "off-by-one distance: r_i from transition i's means instead of i + 1's": {
        "rules": [("lp, d = logp[:, :-1], delta[:, 1:].double()", "lp, d = logp[:, :-1], delta[:, :-1].double()")]},
}

CASES = [(True, 1), (True, 3), (False, 3)]
"""(shared transformer, γ): the token-by-token loop and ragged blocks across token boundaries."""


def _patched(source: str, changes: list[tuple[str, str]]) -> str:
    for old, new in changes:
        if source.count(old) != 1:
            raise SystemExit(f"plant_wrong_rules: {old!r} occurs {source.count(old)} times in the engine; "
                             "update the rule to the engine's current text")
        source = source.replace(old, new)
    return source


def _load(name: str, source: str):
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def planted_engine(rule: dict, tag: str):
    """``generate_speculative`` of an engine copy with ``rule``'s changes."""
    rules_src = _patched(Path(rules.__file__).read_text(), rule.get("rules", []))
    rules_copy = _load(f"planted_rules_{tag}", rules_src)
    uses_rules = ("from ecar.engine.speculative_rules import", f"from {rules_copy.__name__} import")
    residual_copy = _load(f"planted_residual_{tag}", Path(residual.__file__).read_text().replace(*uses_rules))
    engine_src = _patched(Path(engine.__file__).read_text(), rule.get("engine", []))
    engine_src = engine_src.replace(*uses_rules).replace("from ecar.engine.speculative_residual import",
                                                          f"from {residual_copy.__name__} import")
    return _load(f"planted_engine_{tag}", engine_src).generate_speculative


def check(generate, n: int, seed: int) -> dict:
    """The exact-law check of every case; a run that raises counts as caught."""
    mean, cov = exact_law(pair(True)[0])
    out = {}
    for shared, gamma in CASES:
        key = f"{'shared' if shared else 'separate'} draft, gamma {gamma}"
        start = time.perf_counter()
        try:
            samples, stats = draw(generate, shared, gamma, n, seed)
            p, tests = law_pvalue(samples, mean, cov)
            out[key] = {"p": p, "tests": tests, "acceptance": stats.as_dict()["acceptance_rate"]}
        except RuntimeError as e:  # e.g. a residual loop that found nothing: failed fast
            out[key] = {"p": 0.0, "error": str(e)[:200]}
        out[key]["seconds"] = round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="JSON of the results")
    ap.add_argument("--n", type=int, default=100_000, help="images per check")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results, ok = {}, True
    for i, (name, rule) in enumerate(RULES.items()):
        cases = check(planted_engine(rule, str(i)) if rule else engine.generate_speculative, args.n, args.seed)
        p = min(c["p"] for c in cases.values())
        caught = p < THRESHOLD
        verdict = ("PASS (exact)" if not caught else "FAIL: real rule rejected") if not rule else \
            ("caught" if caught else "NOT CAUGHT")
        ok &= caught == bool(rule)
        results[name] = {"smallest_p": p, "verdict": verdict, "cases": cases}
        print(f"{verdict:24s} p = {p:.2e}  {name}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({
            "command": "python tests/plant_wrong_rules.py " + " ".join(sys.argv[1:]),
            "threshold": THRESHOLD, "n": args.n, "seed": args.seed, "all_as_expected": ok, "rules": results},
            indent=2) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
