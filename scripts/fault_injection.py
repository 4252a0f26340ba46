"""Kills a small training run with SIGKILL at random points, reruns it, checks nothing changed.

    .venv/bin/python scripts/fault_injection.py --kills=20 [--seed=0] [--workdir=/tmp/fi]

Runs `python -m experiments.main` on the copy smoke config once uninterrupted (the reference),
then the same command in a second workdir, killing it `--kills` times: every second kill waits
for a checkpoint save to be in flight (an `*.orbax-checkpoint-tmp-*` directory present) and
kills then; the others kill at a random time after training has started. After each kill the
same command is rerun, until the run finishes. Checks that the final checkpoint (all params and
optimizer state), metrics.jsonl (without timing columns) and result.json's per-seed results are
bitwise equal to the reference, prints the counts and exits non-zero on any difference.
The runs use one CPU device (`--config.parallel.cpu_devices=1`), like the in-process reference
the test suite makes: bitwise equality holds for one device count, not across counts.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workdir", default="/tmp/gated_rnn_fault_injection")
    args = parser.parse_args()
    if args.kills < 0 or args.steps < 10:
        parser.error(f"--kills must be >= 0 and --steps >= 10, got {args.kills}, {args.steps}")
    t0 = time.time()
    done = inject(args.workdir, args.kills, args.seed, args.steps, timeout=60.0 * (args.kills + 5))
    print(f"kills: {done['kills']} (during a checkpoint save: {done['kills_during_save']}), "
          f"runs started: {done['restarts']}, final params/metrics/result bitwise equal to the "
          f"uninterrupted run: {not done['problems']} {done['problems'] or ''}  "
          f"({time.time() - t0:.0f} s)")
    return 1 if done["problems"] or done["kills"] < args.kills else 0


if __name__ == "__main__":
    sys.exit(main())
