"""``make bench``: migrate.yml on generated lab fleets of N applications, first run and re-run, measured.

For each fleet size N (``--sizes``, default 10 50 100 500) this generates a fleet with ``python -m azurelab fleet``
(each application with its identity and a PostgreSQL principal, an Azure SQL user or a Cosmos DB role assignment,
a share of them on AKS), starts a fresh lab of that topology on free ports, and runs ``playbooks/migrate.yml`` twice,
exactly as an operator would. It records, per run:

* the wall time (s) and the CPU time of ansible-playbook and every process under it (s);
* ARM requests by HTTP method and the writes among them (the ARM double's counters, ``GET /lab/counters``);
* access tokens issued, by audience (the lab's record of what it issued, ``<state>/issued.jsonl``);
* the ``changed`` and ``failed`` counts of the play recap.

Once per bench: a module process's start-up time and peak memory (``azure_mi`` in check mode for an identity that
does not exist: its imports, its token and one ARM read), median of five runs.

Results go to ``benchmarks/results.json`` and ``benchmarks/RESULTS.md``, with a plot (``benchmarks/fleet.png``,
matplotlib) of wall time against N. Machines here are noisy: wall and CPU times are medians over ``--repeat`` runs
(default 1); request counts do not drift.

Not measured yet (issue 7): the baselines (the tutorial's ``az`` script, azure.azcollection) and database round trips.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests" / "integration"), str(REPO / "lab")]

from labrunner import VENV_BIN, running_lab, run_module  # noqa: E402  (after the path set-up)

RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def generate(apps: int, out: pathlib.Path) -> pathlib.Path:
    """A fleet of ``apps`` applications in ``out``; returns its topology file."""
    subprocess.run([sys.executable, "-m", "azurelab", "fleet", "--apps", str(apps), "--out", str(out)], cwd=REPO,
                   env=dict(os.environ, PYTHONPATH=str(REPO / "lab")), check=True, capture_output=True, timeout=300)
    return out / "topology.yml"


def tokens_by_audience(lab, after_line: int = 0) -> tuple[dict[str, int], int]:
    """Tokens the lab issued after line ``after_line`` of its record, by audience; and the record's line count."""
    lines = (lab.state / "issued.jsonl").read_text().splitlines()
    counts = collections.Counter(json.loads(line).get("audience", "?") for line in lines[after_line:]
                                 if '"kind": "entra-token"' in line)
    return dict(sorted(counts.items())), len(lines)


def playbook_run(lab, inventory: str, log: pathlib.Path) -> dict:
    """One migrate.yml run on the fleet: wall and CPU seconds, ARM counters, tokens, recap totals."""
    lab.lab_api("POST", "counters/reset")
    _tokens, seen = tokens_by_audience(lab)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as output:
        status = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", inventory, "playbooks/migrate.yml"],
                                cwd=REPO, env=lab.env, stdout=output, stderr=subprocess.STDOUT, timeout=6 * 3600,
                                check=False).returncode
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    recap = RECAP.findall(log.read_text())
    tokens, _seen = tokens_by_audience(lab, seen)
    return {"status": status, "wall_s": round(wall, 1),
            "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
            "arm": lab.arm_counters(), "tokens": tokens,
            "changed": sum(int(c) for _h, _o, c, _u, _f in recap), "failed": sum(int(f) for *_x, f in recap),
            "hosts": len(recap)}


def module_start(lab, work: pathlib.Path) -> dict:
    """A module process's wall time and peak resident memory (median of five, GNU time's %e and %M): azure_mi in check
    mode for an identity that does not exist (its imports, its token, one ARM read)."""
    walls, peaks = [], []
    for attempt in range(5):
        measured = work / f"module-{attempt}.time"
        result = run_module(lab, "azure_mi", check=True, wrapper=("/usr/bin/time", "-f", "%e %M", "-o", str(measured)),
                            name="mi-bench-absent", resource_group="rg-lab-apps", location="eastus2")
        assert not result.get("failed"), result
        wall, peak_kib = measured.read_text().split()[-2:]
        walls.append(float(wall))
        peaks.append(int(peak_kib) / 1024)
    return {"wall_s": round(statistics.median(walls), 3), "peak_mb": round(statistics.median(peaks), 1)}


def bench(sizes: list[int], repeat: int, work: pathlib.Path, baseline_az: bool = False) -> dict:
    results = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "fleets": []}
    for apps in sizes:
        topology = generate(apps, work / f"fleet-{apps}")
        runs = []
        for attempt in range(repeat):
            lab_run = running_lab(topology)
            lab = next(lab_run)
            try:
                inventory = str(topology.parent / "inventory")
                first = playbook_run(lab, inventory, work / f"fleet-{apps}-{attempt}-first.log")
                again = playbook_run(lab, inventory, work / f"fleet-{apps}-{attempt}-again.log")
                if "module" not in results:
                    results["module"] = module_start(lab, work)
            finally:
                next(lab_run, None)
            runs.append({"first": first, "again": again})
            print(f"N={apps}: first {first['wall_s']} s (status {first['status']}), re-run {again['wall_s']} s, "
                  f"re-run ARM writes {again['arm']['writes']}", flush=True)
        results["fleets"].append({"applications": apps, "runs": runs,
                                  "first_wall_s": statistics.median(r["first"]["wall_s"] for r in runs),
                                  "again_wall_s": statistics.median(r["again"]["wall_s"] for r in runs)})
        if baseline_az:  # issue 7's baseline (a), on a fresh lab of the same fleet (benchmarks/baseline_az.py)
            import baseline_az as tutorial

            lab_run = running_lab(topology)
            lab = next(lab_run)
            try:
                results["fleets"][-1]["baseline_az"] = tutorial.run(lab, topology, work / f"baseline-az-{apps}")
            finally:
                next(lab_run, None)
    return results


def write_report(results: dict) -> None:
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Fleet benchmark", "", "Written by `make bench` (benchmarks/fleet.py); medians where runs repeat.", "",
             f"Machine: {results['machine']['cpus']} CPUs, Python {results['machine']['python']}.", "",
             "| N | first run (s) | CPU (s) | ARM GET | ARM writes | tokens | re-run (s) | re-run ARM GET | "
             "re-run ARM writes | re-run changed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for fleet in results["fleets"]:
        first, again = fleet["runs"][0]["first"], fleet["runs"][0]["again"]
        lines.append(f"| {fleet['applications']} | {fleet['first_wall_s']} | {first['cpu_s']} | {first['arm']['GET']} "
                     f"| {first['arm']['writes']} | {sum(first['tokens'].values())} | {fleet['again_wall_s']} "
                     f"| {again['arm']['GET']} | {again['arm']['writes']} | {again['changed']} |")
    if "module" in results:
        lines += ["", f"Module process (azure_mi, check mode, one ARM read): {results['module']['wall_s']} s wall "
                      f"(median of 5), {results['module']['peak_mb']} MB peak resident memory."]
    lines += ["", "![wall time against N](fleet.png)", ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    sizes = [f["applications"] for f in results["fleets"]]
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    axes.plot(sizes, [f["first_wall_s"] for f in results["fleets"]], "o-", label="migrate.yml, first run")
    axes.plot(sizes, [f["again_wall_s"] for f in results["fleets"]], "s--", label="migrate.yml, re-run")
    axes.set_xlabel("applications (N)")
    axes.set_ylabel("wall time (s)")
    axes.set_title("Fleet migration on the lab")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(HERE / "fleet.png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100, 500])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--baseline-az", action="store_true",
                        help="also run the tutorial's az/psql/pyodbc baseline on each fleet (results.json only)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mi-bench-") as work:
        results = bench(args.sizes, args.repeat, pathlib.Path(work), args.baseline_az)
    write_report(results)
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
