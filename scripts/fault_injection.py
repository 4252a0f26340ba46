"""Kills a small training run with SIGKILL at random points, reruns it, checks nothing changed;
then starts a second run on a busy workdir, and reruns a finished run whose newest checkpoint
lost its item folder.

    .venv/bin/python scripts/fault_injection.py --kills=20 [--seed=0] [--workdir=/tmp/fi] \
        [--cases=kills,concurrent,damaged_newest]

Runs `python -m experiments.main` on the copy smoke config once uninterrupted (the reference),
then the same command in a second workdir, killing it `--kills` times: every second kill waits
for a checkpoint save to be in flight (an `*.orbax-checkpoint-tmp-*` directory present) and
kills then; the others kill at a random time after training has started. After each kill the
same command is rerun, until the run finishes. Checks that the final checkpoint (all params and
optimizer state), metrics.jsonl (without timing columns) and result.json's per-seed results are
bitwise equal to the reference, prints the counts and exits non-zero on any difference.
The runs use one CPU device (`--config.parallel.cpu_devices=1`), like the in-process reference
the test suite makes: bitwise equality holds for one device count, not across counts.

`concurrent`: while a run trains, the same command with another learning rate on the same
workdir must exit 2 with one line naming the first run's pid, and the first must finish bitwise
equal to the reference. `damaged_newest`: a copy of the finished reference with every file of
its newest checkpoint step deleted must rerun to the same final state and metrics, with the step
and the metrics rows past the previous step kept in damaged_checkpoints/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("steps_per_sec", "wall_time_s")


def command(workdir: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "experiments.main",
            "--config=experiments/configs/copy.py:smoke", f"--workdir={workdir}",
            f"--config.train.steps={steps}", "--config.train.log_every=5",
            "--config.train.checkpoint_every=10", "--config.train.eval_every=20",
            "--config.train.max_checkpoints=2", "--config.parallel.cpu_devices=1"]


def _start(workdir: str, steps: int) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen(command(workdir, steps), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _saving(workdir: str) -> bool:
    directory = os.path.join(workdir, "checkpoints")
    try:
        return any(".orbax-checkpoint-tmp" in n for n in os.listdir(directory))
    except FileNotFoundError:
        return False


def _last_step(workdir: str) -> int:
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            lines = f.read().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, ValueError):  # ValueError: a row being written
        return 0


def _rows(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def _final_state(workdir: str, steps: int) -> list[np.ndarray]:
    import jax
    import orbax.checkpoint as ocp
    path = os.path.join(workdir, "checkpoints", str(steps), "default")
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(path)
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def compare(reference: str, workdir: str, steps: int) -> list[str]:
    """Differences between two finished runs' final state, metrics rows and results."""
    problems = []
    a, b = _final_state(reference, steps), _final_state(workdir, steps)
    if len(a) != len(b) or any(x.dtype != y.dtype or not np.array_equal(x, y)
                               for x, y in zip(a, b)):
        problems.append("final checkpoint differs")
    if _rows(reference) != _rows(workdir):
        problems.append("metrics.jsonl differs")
    results = []
    for w in (reference, workdir):
        with open(os.path.join(w, "result.json")) as f:
            results.append(json.load(f)["seeds"])
    if results[0] != results[1]:
        problems.append("result.json differs")
    return problems


def inject(root: str, kills: int, seed: int = 0, steps: int = 200, timeout: float = 300.0,
           reference: str | None = None) -> dict:
    """Runs the experiment; returns {"kills", "kills_during_save", "restarts", "problems"}.

    `reference`: the workdir of a finished uninterrupted run of `command(..., steps)` (e.g. made
    in-process by a test); by default it is made here, in root/reference.
    """
    rng = random.Random(seed)
    workdir = os.path.join(root, "faulty")
    shutil.rmtree(workdir, ignore_errors=True)
    if reference is None:
        reference = os.path.join(root, "reference")
        shutil.rmtree(reference, ignore_errors=True)
        subprocess.run(command(reference, steps), cwd=REPO, check=True, timeout=timeout,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    done = dict(kills=0, kills_during_save=0, restarts=0, problems=[])
    deadline = time.time() + timeout
    while not os.path.exists(os.path.join(workdir, "result.json")):
        if time.time() > deadline:
            done["problems"].append("timed out")
            break
        proc = _start(workdir, steps)
        done["restarts"] += 1
        # Random mode: once the log passes a random step past the one resumed from, kill after a
        # random delay of up to 30 ms (a few steps, an eval or a save). Near the end (no room
        # for a random step) the kill waits for a save instead.
        first = _last_step(workdir) + 1
        at_save = done["kills"] % 2 == 1 or first > steps - 10
        target = rng.randint(first, max(first, steps - 10))
        delay, seen = rng.uniform(0.0, 0.03), None
        while proc.poll() is None and done["kills"] < kills:
            now = time.time()
            if seen is None and _last_step(workdir) >= target:
                seen = now
            if at_save and _saving(workdir) or not at_save and seen and now - seen > delay:
                saving = _saving(workdir)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                if os.path.exists(os.path.join(workdir, "result.json")):
                    break  # killed after the run had finished: not a fault
                done["kills"] += 1
                done["kills_during_save"] += int(saving)
                break
            time.sleep(0.002)
        else:
            _, err = proc.communicate()
            if proc.returncode != 0:
                done["problems"].append(f"run exited {proc.returncode}: "
                                        f"{err.decode()[-500:]}")
                break
            continue
        proc.communicate()
    if not done["problems"]:
        done["problems"] = compare(reference, workdir, steps)
    return done


def _holds_lock(workdir: str) -> bool:
    try:
        with open(os.path.join(workdir, ".lock")) as f:
            return bool(f.read().strip())
    except FileNotFoundError:
        return False


def concurrent(root: str, reference: str, steps: int, timeout: float = 300.0) -> list[str]:
    """A second run (another learning rate) started on a workdir while a first trains there:
    the problems found ([] if the second was refused in one line naming the first's pid, nothing
    changed, and the first finished bitwise equal to `reference`)."""
    workdir = os.path.join(root, "concurrent")
    shutil.rmtree(workdir, ignore_errors=True)
    first = _start(workdir, steps)
    deadline = time.time() + timeout
    while not (_holds_lock(workdir) and _last_step(workdir) > 0) and first.poll() is None:
        if time.time() > deadline:
            first.kill()
            return ["timed out waiting for the first run"]
        time.sleep(0.01)
    # Paused (still holding its lock) so that it cannot finish before the second one starts.
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(command(workdir, steps) + ["--config.train.learning_rate=0.01"],
                                cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                                capture_output=True, text=True, timeout=timeout)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=timeout)
    problems = []
    lines = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
    if second.returncode != 2 or len(lines) != 1 or f"pid {first.pid}" not in lines[0]:
        problems.append(f"second run: exit {second.returncode}, {second.stderr[-300:]!r}")
    if first.returncode != 0:
        problems.append(f"first run exited {first.returncode}: {err.decode()[-300:]}")
    return problems or compare(reference, workdir, steps)


def damaged_newest(root: str, reference: str, steps: int, timeout: float = 300.0) -> list[str]:
    """A finished run whose newest checkpoint step lost every file (its item folder too),
    rerun: the problems found ([] if it fell back to the previous step and ended bitwise equal
    to `reference`, with the discarded step and metrics rows in damaged_checkpoints/)."""
    workdir = os.path.join(root, "damaged_newest")
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(reference, workdir)
    newest = os.path.join(workdir, "checkpoints", str(steps))
    for name in os.listdir(newest):
        path = os.path.join(newest, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    proc = subprocess.run(command(workdir, steps), cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=timeout)
    if proc.returncode != 0:
        return [f"rerun exited {proc.returncode}: {proc.stderr[-300:]}"]
    damaged = os.path.join(workdir, "damaged_checkpoints")
    kept = sorted(os.listdir(damaged)) if os.path.isdir(damaged) else []
    problems = [] if f"{steps}_0" in kept and "metrics_0.jsonl" in kept else [
        f"damaged_checkpoints/ holds {kept}"]
    return problems + compare(reference, workdir, steps)


CASES = ("kills", "concurrent", "damaged_newest")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workdir", default="/tmp/gated_rnn_fault_injection")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {CASES}")
    args = parser.parse_args()
    cases = args.cases.split(",")
    if args.kills < 0 or args.steps < 10 or not set(cases) <= set(CASES):
        parser.error(f"--kills must be >= 0, --steps >= 10 and --cases among {CASES}, got "
                     f"{args.kills}, {args.steps}, {args.cases}")
    t0, failed = time.time(), False
    reference = os.path.join(args.workdir, "reference")
    if "kills" in cases:
        done = inject(args.workdir, args.kills, args.seed, args.steps,
                      timeout=60.0 * (args.kills + 5))
        print(f"kills: {done['kills']} (during a checkpoint save: {done['kills_during_save']}), "
              f"runs started: {done['restarts']}, final params/metrics/result bitwise equal to "
              f"the uninterrupted run: {not done['problems']} {done['problems'] or ''}  "
              f"({time.time() - t0:.0f} s)")
        failed = bool(done["problems"]) or done["kills"] < args.kills
    elif not os.path.exists(os.path.join(reference, "result.json")):
        shutil.rmtree(reference, ignore_errors=True)
        subprocess.run(command(reference, args.steps), cwd=REPO, check=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    for name, case in (("concurrent", concurrent), ("damaged_newest", damaged_newest)):
        if name in cases:
            t = time.time()
            problems = case(args.workdir, reference, args.steps)
            print(f"{name}: {'ok' if not problems else problems}  ({time.time() - t:.0f} s)")
            failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
