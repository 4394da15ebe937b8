"""``make bench``: migrate.yml on generated lab fleets of N applications, first run and re-run, measured.

For each fleet size N (``--sizes``, default 10 50 100 500) this generates a fleet with ``python -m azurelab fleet``
(each application with its identity and a PostgreSQL principal, an Azure SQL user or a Cosmos DB role assignment,
a share of them on AKS), starts a fresh lab of that topology on free ports, and runs ``playbooks/migrate.yml`` twice,
exactly as an operator would. It records, per run:

* the wall time (s) and the CPU time of ansible-playbook and every process under it (s);
* ARM requests by HTTP method and the writes among them (the ARM double's counters, ``GET /lab/counters``);
* access tokens issued, by audience (the lab's record of what it issued, ``<state>/issued.jsonl``);
* database sessions and round trips, PostgreSQL and Azure SQL (the lab's counters: a round trip is a request the
  client waits for, see ``ArmState.count_database``), whoever the client is (modules, OpenBao, the demo apps);
* ARM reads per object read: the GETs by resource path in the ARM double's request log (``<state>/logs/server.log``,
  method, path and status only), their mean and maximum per path;
* the ``changed`` and ``failed`` counts of the play recap;
* where the time goes: task executions (a task on one host or one loop item) and wall time per task
  (``benchmarks/callback_plugins/bench_profile.py``), so CPU time per execution and executions per application.

Once per bench: a module process's start-up time and peak memory (``azure_mi`` in check mode for an identity that
does not exist: its imports, its token and one ARM read), median of five runs; and what its imports cost, each in a
fresh interpreter (``python -X importtime``).

Results go to ``benchmarks/results.json`` and ``benchmarks/RESULTS.md``, with a plot (``benchmarks/fleet.png``,
matplotlib) of wall time against N. Machines here are noisy: wall and CPU times are medians over ``--repeat`` runs
(default 1); request counts do not drift.

Baselines, for the fleet sizes in ``--baseline-sizes`` (default 10 and 50), each on a fresh lab of the same fleet:
the tutorial's per-application procedure as an ``az``/psql/pyodbc script (``benchmarks/baseline_az.py``) and the same
steps with azure.azcollection's modules (``benchmarks/baseline_azcollection.py``). Each baseline's ``run(lab,
topology, work)`` returns the same measures (``status``, ``wall_s``, ``cpu_s``, ``arm``, ``tokens``) and checks that
the end state it was meant to reach was reached. The report gives our first run's time and ARM requests as ratios to
each, and whether issue 7's targets are met.
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

ARM_REQUEST = re.compile(r" INFO ArmHandler (GET|HEAD|PUT|PATCH|DELETE|POST) (/\S*) \d{3}$", re.MULTILINE)
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def generate(apps: int, out: pathlib.Path) -> pathlib.Path:
    """A fleet of ``apps`` applications in ``out``; returns its topology file."""
    made = subprocess.run([sys.executable, "-m", "azurelab", "fleet", "--apps", str(apps), "--out", str(out)],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO / "lab")), capture_output=True, text=True,
                          timeout=300, check=False)
    if made.returncode:
        raise SystemExit(f"benchmarks/fleet.py: {made.stderr.strip() or made.stdout.strip()}")
    return out / "topology.yml"


def tokens_by_audience(lab, after_line: int = 0) -> tuple[dict[str, int], int]:
    """Tokens the lab issued after line ``after_line`` of its record, by audience; and the record's line count."""
    lines = (lab.state / "issued.jsonl").read_text().splitlines()
    counts = collections.Counter(json.loads(line).get("audience", "?") for line in lines[after_line:]
                                 if '"kind": "entra-token"' in line)
    return dict(sorted(counts.items())), len(lines)


def reads_per_object(lab, after_byte: int = 0) -> tuple[dict, int]:
    """ARM GETs by resource path in the lab's request log after byte ``after_byte``: ``{"objects", "mean", "max",
    "most_read"}``; and the log's size."""
    log = lab.state / "logs" / "server.log"
    with open(log, "rb") as text:
        text.seek(after_byte)
        tail = text.read().decode("utf-8", "replace")
    reads = collections.Counter(path.lower() for method, path in ARM_REQUEST.findall(tail) if method == "GET")
    if not reads:
        return {"objects": 0, "mean": 0, "max": 0, "most_read": None}, after_byte + len(tail.encode())
    path, most = reads.most_common(1)[0]
    return ({"objects": len(reads), "mean": round(sum(reads.values()) / len(reads), 2), "max": most,
             "most_read": path.split("/providers/", 1)[-1]}, after_byte + len(tail.encode()))


def playbook_run(lab, inventory: str, log: pathlib.Path) -> dict:
    """One migrate.yml run on the fleet: wall and CPU seconds, ARM and database counters, tokens, ARM reads per
    object, recap totals."""
    lab.lab_api("POST", "counters/reset")
    _tokens, seen = tokens_by_audience(lab)
    profile = log.with_suffix(".profile.json")
    env = dict(lab.env, ANSIBLE_CALLBACK_PLUGINS=str(HERE / "callback_plugins"), ANSIBLE_CALLBACKS_ENABLED="bench_profile",
               BENCH_PROFILE_OUT=str(profile))
    log_at = (lab.state / "logs" / "server.log").stat().st_size
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as output:
        status = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", inventory, "playbooks/migrate.yml"],
                                cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, timeout=6 * 3600,
                                check=False).returncode
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    recap = RECAP.findall(log.read_text())
    tokens, _seen = tokens_by_audience(lab, seen)
    reads, _log_at = reads_per_object(lab, log_at)
    return {"status": status, "wall_s": round(wall, 1),
            "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
            "arm": lab.arm_counters(), "tokens": tokens, "reads_per_object": reads,
            "tasks": json.loads(profile.read_text()) if profile.exists() else {},
            "changed": sum(int(c) for _h, _o, c, _u, _f in recap), "failed": sum(int(f) for *_x, f in recap),
            "hosts": len(recap), "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


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


# What a module process imports, cheapest first: Ansible's module API, then the SDKs our modules load lazily.
IMPORTS = ("ansible.module_utils.basic", "azure.core.pipeline.policies", "azure.identity", "azure.mgmt.msi",
           "psycopg", "pyodbc", "hvac", "kubernetes.client")


def import_costs() -> dict[str, float]:
    """Seconds each of :data:`IMPORTS` takes in a fresh interpreter (``-X importtime``'s cumulative time of the
    top-level package, median of three)."""
    costs = {}
    for name in IMPORTS:
        samples = []
        for _attempt in range(3):
            out = subprocess.run([str(VENV_BIN / "python"), "-X", "importtime", "-c", f"import {name}"],
                                 capture_output=True, text=True, check=True, timeout=60).stderr
            cumulative = [int(line.split("|")[1]) for line in out.splitlines()
                          if line.startswith("import time:") and line.split("|")[2].strip() == name]
            samples.append(cumulative[-1] / 1e6)
        costs[name] = round(statistics.median(samples), 3)
    return costs


# label in the report: module in benchmarks/ with run(lab, topology, work) -> dict
BASELINES = {"tutorial (az, psql, pyodbc)": "baseline_az", "azure.azcollection": "baseline_azcollection"}


def baseline_runs(topology: pathlib.Path, apps: int, work: pathlib.Path, measured: dict, checkpoint) -> None:
    """Each of :data:`BASELINES` on a fresh lab of the fleet at ``topology``, into ``measured`` (label -> result);
    ``checkpoint()`` after each."""
    import importlib  # pylint: disable=import-outside-toplevel

    sys.path.insert(0, str(HERE))
    for label, module in BASELINES.items():
        lab_run = running_lab(topology)
        lab = next(lab_run)
        try:
            measured[label] = importlib.import_module(module).run(lab, topology, work / f"{module}-{apps}")
        finally:
            next(lab_run, None)
        print(f"N={apps}: {label} {measured[label]['wall_s']} s (status {measured[label]['status']})", flush=True)
        checkpoint()


def bench(sizes: list[int], repeat: int, work: pathlib.Path, baseline_sizes: tuple[int, ...] = (),
          checkpoint=lambda results: None) -> dict:
    """Measure every size (and the baselines at ``baseline_sizes``); ``checkpoint(results)`` after each fleet and each
    baseline, so that a bench stopped half-way still leaves what it measured."""
    results = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "fleets": [], "complete": False}
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
                    results["module"] = dict(module_start(lab, work), imports=import_costs())
            finally:
                next(lab_run, None)
            runs.append({"first": first, "again": again})
            print(f"N={apps}: first {first['wall_s']} s (status {first['status']}), re-run {again['wall_s']} s, "
                  f"re-run ARM writes {again['arm']['writes']}", flush=True)
        results["fleets"].append({"applications": apps, "runs": runs, "measured_on": time.strftime("%Y-%m-%d"),
                                  "first_wall_s": statistics.median(r["first"]["wall_s"] for r in runs),
                                  "again_wall_s": statistics.median(r["again"]["wall_s"] for r in runs)})
        checkpoint(results)
        if apps in baseline_sizes:
            results["fleets"][-1]["baselines"] = {}
            baseline_runs(topology, apps, work, results["fleets"][-1]["baselines"], lambda: checkpoint(results))
    results["complete"] = True
    return results


def database(run: dict, what: str) -> str:
    """``postgres + sql`` sessions or round trips of a run, as ``PG / SQL``."""
    return f"{run['arm'].get('postgres_' + what, 0)} / {run['arm'].get('sql_' + what, 0)}"


def arm_requests(run: dict) -> int:
    return sum(run["arm"].get(method, 0) for method in ("GET", "HEAD", "PUT", "PATCH", "DELETE", "POST"))


# The roles of migrate.yml that do what the tutorial does; the others (preflight, verify, evidence, decommission,
# audit) are the checks and the clean-up it leaves out.
TUTORIAL_PHASES = ("identity", "enable", "grant", "switch", "cutover")


def phase_wall(run: dict, phases: tuple[str, ...] = TUTORIAL_PHASES) -> float:
    """Wall seconds of the tasks of ``phases`` in a run (bench_profile's per-task wall time)."""
    return round(sum(task["wall_s"] for name, task in run["tasks"].items()
                     if name.split(" : ", 1)[0].rsplit(".", 1)[-1] in phases and " : " in name), 1)


def baseline_section(results: dict) -> list[str]:
    """Each baseline beside our first run on the same fleet, and the ratios (theirs / ours: above 1, we are faster or
    send fewer requests)."""
    rows = []
    for fleet in results["fleets"]:
        ours = fleet["runs"][0]["first"]
        if fleet.get("baselines"):
            rows.append(f"| {fleet['applications']} | migrate.yml (this collection) | {fleet['first_wall_s']} "
                        f"| {ours['cpu_s']} | {ours['arm']['GET']} / {ours['arm']['writes']} "
                        f"| {sum(ours['tokens'].values())} | {database(ours, 'round_trips')} | 1 | 1 |")
            phases = phase_wall(ours)
            rows.append(f"| {fleet['applications']} | migrate.yml, the tutorial's phases only "
                        f"({', '.join(TUTORIAL_PHASES)}) | {phases} | | | | | | |")
        for label, theirs in fleet.get("baselines", {}).items():
            tokens = theirs["tokens"] if isinstance(theirs["tokens"], int) else sum(theirs["tokens"].values())
            rows.append(f"| {fleet['applications']} | {label} | {theirs['wall_s']} | {theirs['cpu_s']} "
                        f"| {theirs['arm']['GET']} / {theirs['arm']['writes']} | {tokens} "
                        f"| {database(theirs, 'round_trips')} | {theirs['wall_s'] / fleet['first_wall_s']:.2f} "
                        f"| {arm_requests(theirs) / max(arm_requests(ours), 1):.2f} |")
    if not rows:
        return []
    return ["", "## Against the baselines", "",
            "Each on a fresh lab of the same fleet. The baselines do the tutorial's steps only (identities, their "
            "attachment, server Entra settings, database principals and grants, Cosmos DB role assignments, federated "
            "credentials); migrate.yml also checks before it writes, verifies every login as its identity, watches "
            "for Vault sessions, switches the applications, retires the Vault roles and secrets and turns passwords "
            "and keys off. Ratios are theirs / ours: above 1, migrate.yml is faster or sends fewer ARM requests.", "",
            "| N | tool | wall (s) | CPU (s) | ARM GET / writes | tokens | DB round trips (PG / SQL) | wall ratio "
            "| ARM requests ratio |",
            "|---|---|---|---|---|---|---|---|---|"] + rows


def targets_section(results: dict) -> list[str]:
    """Issue 7's targets, each with the measured value and whether it is met."""
    def row(target: str, measured: str, met: bool) -> str:
        return f"| {target} | {measured} | {'met' if met else '**not met**'} |"

    lines = ["", "## Targets (issue 7)", "", "| target | measured | |", "|---|---|---|"]
    for fleet in results["fleets"]:
        again = fleet["runs"][0]["again"]
        reads = again["reads_per_object"]
        lines.append(row(f"re-run of {fleet['applications']} applications: 0 ARM writes", str(again["arm"]["writes"]),
                         again["arm"]["writes"] == 0))
        lines.append(row(f"re-run of {fleet['applications']} applications: at most one read per object",
                         f"mean {reads['mean']}, max {reads['max']} ({reads['most_read']})", reads["max"] <= 1))
    if "module" in results:
        module = results["module"]
        lines.append(row("a module process starts in at most 0.4 s", f"{module['wall_s']} s", module["wall_s"] <= 0.4))
        lines.append(row("a module process stays at or below 80 MB", f"{module['peak_mb']} MB", module["peak_mb"] <= 80))
    for fleet in results["fleets"]:
        for label, theirs in fleet.get("baselines", {}).items():
            wanted = 5 if label.startswith("tutorial") else 2
            ratio = theirs["wall_s"] / fleet["first_wall_s"]
            lines.append(row(f"first run of {fleet['applications']}: at least {wanted}x faster than {label}",
                             f"{ratio:.2f}x", ratio >= wanted))
    return lines


def profile_section(results: dict, top: int = 12) -> list[str]:
    """Task executions per application and CPU per execution for each fleet, and the costliest tasks of the largest
    fleet's first run (bench_profile callback)."""
    lines = ["", "## Where the time goes", "",
             "An execution is one task on one host or one loop item; CPU is ansible-playbook's and every process "
             "under it (modules, the lab's demo apps), so CPU per execution is what one costs on average.", "",
             "| N | run | executions | per application | skipped | CPU per execution (s) |", "|---|---|---|---|---|---|"]
    for fleet in results["fleets"]:
        for label in ("first", "again"):
            run = fleet["runs"][0][label]
            executions = sum(task["executions"] for task in run["tasks"].values())
            skipped = sum(task["skipped"] for task in run["tasks"].values())
            if executions:
                lines.append(f"| {fleet['applications']} | {label} | {executions} | "
                             f"{executions / fleet['applications']:.1f} | {skipped} | {run['cpu_s'] / executions:.2f} |")
    largest = results["fleets"][-1]
    tasks = largest["runs"][0]["first"]["tasks"]
    lines += ["", f"The {top} tasks that took longest in the first run of N = {largest['applications']}:", "",
              "| task | executions | changed | wall (s) |", "|---|---|---|---|"]
    for name, task in sorted(tasks.items(), key=lambda item: -item[1]["wall_s"])[:top]:
        lines.append(f"| {name.replace('csa_inabox.managed_identity.', '')} | {task['executions']} | {task['changed']} "
                     f"| {task['wall_s']} |")
    return lines


def reading_section(results: dict) -> list[str]:
    """Where the targets not met lose their time, in the terms of the measures above."""
    if not results["fleets"]:
        return []
    largest = results["fleets"][-1]
    first, again = largest["runs"][0]["first"], largest["runs"][0]["again"]
    executions = sum(task["executions"] for task in first["tasks"].values()) or 1
    lines = ["", "## Reading the numbers", "",
             f"- migrate.yml's cost is Ansible's cost per task execution: {executions} executions for "
             f"{largest['applications']} applications ({executions / largest['applications']:.1f} each), "
             f"{first['cpu_s'] / executions:.2f} CPU-s each on average; the run kept "
             f"{first['cpu_s'] / (largest['first_wall_s'] * results['machine']['cpus']):.0%} of this machine's "
             f"{results['machine']['cpus']} cores busy ({first['cpu_s']} CPU-s in {largest['first_wall_s']} s). Each "
             "execution is a fresh Python process (AnsiballZ) that imports its SDKs and asks for its own token, so "
             "fewer executions per application is the lever, not faster requests: the lab answers an ARM request in "
             "milliseconds.",
             f"- The re-run changes nothing (ARM writes: {again['arm']['writes']}) but costs nearly as much as the first "
             "run: every phase checks its own objects again, in its own module process, before it decides there is "
             "nothing to do. The objects read more than once are the servers and accounts "
             f"(most read: {again['reads_per_object']['most_read']}, {again['reads_per_object']['max']} times), read "
             "by several phases (preflight, enable, cutover, the audit) and, a Cosmos DB account, by each "
             "application's grant, each in a separate process that cannot reuse what another read; "
             "per-application objects are read once or twice."]
    if "module" in results:
        imports = results["module"].get("imports", {})
        lines.append(f"- A module process: {results['module']['wall_s']} s in all; its imports alone "
                     f"(`azure.identity` {imports.get('azure.identity', '?')} s, `ansible.module_utils.basic` "
                     f"{imports.get('ansible.module_utils.basic', '?')} s, each in a fresh interpreter); the modules "
                     "already import only the SDK they use, and azure-identity pulls in MSAL and cryptography "
                     "whichever credential is used.")
    lines.append("- The baselines do less (see above) and send requests one by one; their cost is one `az` or module "
                 "process per step. migrate.yml runs up to `forks` (20) applications at once.")
    lines += like_for_like(results)
    return lines


def like_for_like(results: dict) -> list[str]:
    """At the largest fleet with baselines: our tutorial phases against each baseline, and the most a run of our
    measured CPU time can gain on each with this machine's cores (the bound the wall-time targets meet). Nothing when
    no fleet has baselines or its run left no task profile."""
    fleets = [fleet for fleet in results["fleets"] if fleet.get("baselines")]
    if not fleets:
        return []
    fleet = fleets[-1]
    apps, ours, cpus = fleet["applications"], fleet["runs"][0]["first"], results["machine"]["cpus"]
    phases = phase_wall(ours)
    if not phases or not ours["cpu_s"]:
        return []
    lines = [f"- Like for like at N = {apps}: the tutorial's phases of migrate.yml ({', '.join(TUTORIAL_PHASES)}) took "
             f"{phases} s of its {fleet['first_wall_s']} s; "
             + "; ".join(f"{theirs['wall_s'] / phases:.2f}x faster than {label} ({theirs['wall_s']} s)"
                         for label, theirs in fleet["baselines"].items())
             + f". The other {fleet['first_wall_s'] - phases:.1f} s are what the baselines leave out (preflight, "
             "verify: each login proven as the identity, evidence: the watch for Vault sessions, decommission, audit)."]
    floor = ours["cpu_s"] / cpus  # no run of this CPU time is shorter on this many cores
    bounds = []
    for label, theirs in fleet["baselines"].items():
        wanted = 5 if label.startswith("tutorial") else 2
        bounds.append(f"at most {theirs['wall_s'] / floor:.2f}x faster than {label} ({theirs['wall_s']} s; measured "
                      f"{theirs['wall_s'] / fleet['first_wall_s']:.2f}x; {wanted}x would need at most "
                      f"{theirs['wall_s'] * cpus / (wanted * apps):.1f} CPU-s per application)")
    lines.append(f"- CPU bounds the speed-up: migrate.yml spent {ours['cpu_s'] / apps:.1f} CPU-s per application, so "
                 f"on {cpus} cores its first run of N = {apps} cannot take less than {floor:.0f} s, every core busy: "
                 + "; ".join(bounds) + ".")
    return lines


def write_report(results: dict) -> None:
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Fleet benchmark", "", "Written by `make bench` (benchmarks/fleet.py); medians where runs repeat.", "",
             *([] if results.get("complete", True) else
               ["**Partial**: the bench was stopped before it measured every size and baseline it was asked for; "
                "this is what it had measured by then.", ""]),
             f"Machine: {results['machine']['cpus']} CPUs, Python {results['machine']['python']}.", "",
             *[f"Note: {note}" for note in results.get("notes", [])], *([""] if results.get("notes") else []),
             "| N | first run (s) | CPU (s) | ARM GET | ARM writes | tokens | DB sessions | DB round trips "
             "| re-run (s) | re-run ARM GET | re-run ARM writes | re-run GETs per object read (mean / max) "
             "| re-run changed | measured on (load, 1 min, before / after the first run) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for fleet in results["fleets"]:
        first, again = fleet["runs"][0]["first"], fleet["runs"][0]["again"]
        reads = again["reads_per_object"]
        lines.append(f"| {fleet['applications']} | {fleet['first_wall_s']} | {first['cpu_s']} | {first['arm']['GET']} "
                     f"| {first['arm']['writes']} | {sum(first['tokens'].values())} | {database(first, 'sessions')} "
                     f"| {database(first, 'round_trips')} | {fleet['again_wall_s']} | {again['arm']['GET']} "
                     f"| {again['arm']['writes']} | {reads['mean']} / {reads['max']} ({reads['objects']} objects) "
                     f"| {again['changed']} | {fleet.get('measured_on', '?')} "
                     f"({' / '.join(str(load) for load in first.get('load_1min', ['?']))}) |")
    lines += baseline_section(results)
    lines += targets_section(results)
    lines += profile_section(results)
    lines += reading_section(results)
    if "module" in results:
        module = results["module"]
        lines += ["", "## A module process", "",
                  f"`azure_mi` in check mode (its imports, one token, one ARM read): {module['wall_s']} s wall (median of "
                  f"5), {module['peak_mb']} MB peak resident memory. What its imports cost, each alone in a fresh "
                  "interpreter (`python -X importtime`, median of 3; they share azure-core, so they do not add up):", "",
                  "| import | s |", "|---|---|"]
        lines += [f"| `{name}` | {cost} |" for name, cost in module.get("imports", {}).items()]
    lines += ["", "![wall time against N](fleet.png)", ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    sizes = [f["applications"] for f in results["fleets"]]
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    axes.plot(sizes, [f["first_wall_s"] for f in results["fleets"]], "o-", label="migrate.yml, first run")
    axes.plot(sizes, [f["again_wall_s"] for f in results["fleets"]], "s--", label="migrate.yml, re-run")
    for label in BASELINES:
        measured = [(f["applications"], f["baselines"][label]["wall_s"]) for f in results["fleets"]
                    if label in f.get("baselines", {})]
        if measured:
            axes.plot(*zip(*measured), "^:", label=label)
    axes.set_xlabel("applications (N)")
    axes.set_ylabel("wall time (s)")
    axes.set_title("Fleet migration on the lab")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(HERE / "fleet.png", dpi=120)


def merged(previous: dict, results: dict) -> dict:
    """``results`` with the fleets of ``previous`` whose sizes it does not have, by size; its module measure, else the
    previous one; the previous notes."""
    measured = {fleet["applications"] for fleet in results["fleets"]}
    fleets = [fleet for fleet in previous["fleets"] if fleet["applications"] not in measured] + results["fleets"]
    combined = dict(results, fleets=sorted(fleets, key=lambda fleet: fleet["applications"]),
                    notes=previous.get("notes", []))
    if "module" not in results and "module" in previous:
        combined["module"] = previous["module"]
    return combined


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100, 500])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--baseline-sizes", type=int, nargs="*", default=[10, 50],
                        help="fleet sizes that also run the baselines (none: --baseline-sizes with no value)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the fleets of benchmarks/results.json that this run does not measure (a bench "
                             "split over several sittings: each fleet records the day it was measured)")
    parser.add_argument("--report-only", action="store_true",
                        help="write RESULTS.md and the plot again from benchmarks/results.json, measuring nothing")
    args = parser.parse_args(argv)
    if args.report_only:
        write_report(json.loads((HERE / "results.json").read_text()))
        print(f"wrote {HERE / 'RESULTS.md'}")
        return 0
    previous = json.loads((HERE / "results.json").read_text()) if args.merge else None

    def report(results: dict) -> None:
        write_report(merged(previous, results) if previous else results)

    with tempfile.TemporaryDirectory(prefix="mi-bench-") as work:
        results = bench(args.sizes, args.repeat, pathlib.Path(work), tuple(args.baseline_sizes), report)
    report(results)
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
