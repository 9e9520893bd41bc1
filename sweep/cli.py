"""The ``sweep`` command: presets, train, run, resume, analyze, compare.

Bad input exits with code 2 and one line naming what was wrong and what is allowed, before Ray starts or
MLflow is written to. This module imports only the spec's checks at its top: each command imports what it
needs (torch, Ray, MLflow: seconds each) after its input has been checked, so bad input is refused in well
under a second.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import shlex
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sweep import preflight
from sweep.preflight import SweepError, TrackingError
from sweep.spec import SpecError, load_spec, preset_summaries

RESULTS_DIR = Path("sweep_results")
TUNE_DIR = Path("ray_results")


class UsageError(Exception):
    """Printed as ``sweep: error: <message>``; exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweep", description="Model-complexity sweeps on Ray Tune, tracked in MLflow.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("presets", help="list the shipped sweep presets")

    t = sub.add_parser("train", help="train one configuration: no Ray, no MLflow (the debugging path)")
    t.add_argument("--C", type=int, required=True, help="ResNet width")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--protocol", choices=["handout", "epochs"], default="handout")
    t.add_argument("--budget", type=int, default=4000, help="updates (handout) or epochs (epochs)")
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--eval-every", type=int, default=None, help="default: 25 updates / 10 epochs")
    t.add_argument("--split-seed", type=int, default=0)
    t.add_argument("--label-noise", type=float, default=0.0,
                   help="fraction of training labels replaced by a different class, in [0, 1)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads")

    def tracking_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                        "else sqlite:///mlflow.db here)")
        sp.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a fresh local Ray)")
        sp.add_argument("--no-analyze", action="store_true", help="skip the plots and report at the end")
        sp.add_argument("--out", type=Path, help="analysis folder (default: sweep_results/<sweep_id>)")

    r = sub.add_parser("run", help="run a sweep: PRESET or FILE.yaml, with --set overrides")
    r.add_argument("spec", nargs="?", default="hw2", help="preset name or YAML file (default: hw2)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set seeds=10 --set model.C=[1,2,4,8]")
    r.add_argument("--storage", default=str(TUNE_DIR),
                   help="Ray Tune results: a folder (shared by all nodes on a cluster) or a URI like s3://bucket/x")
    r.add_argument("--gpus-may-autoscale", action="store_true",
                   help="allow GPU trials on a cluster that has no GPU yet but autoscales GPU workers")
    tracking_args(r)

    s = sub.add_parser("resume", help="finish an interrupted sweep (the latest one by default)")
    s.add_argument("sweep_id", nargs="?")
    tracking_args(s)

    a = sub.add_parser("analyze", help="plots and report of a sweep (the latest one by default)")
    a.add_argument("sweep_id", nargs="?")
    a.add_argument("--tracking-uri")
    a.add_argument("--out", type=Path)
    a.add_argument("--x", metavar="AXIS",
                   help="x axis of complexity.png: any numeric axis of the sweep (default: the width knob C); "
                        "every other varying axis splits lines, then panels")
    c = sub.add_parser("compare", help="the complexity curves of several sweeps on one figure, with a table")
    c.add_argument("sweep_ids", nargs="+", metavar="SWEEP_ID", help="two or more sweep ids (same family and knob)")
    c.add_argument("--tracking-uri")
    c.add_argument("--out", type=Path, help="folder (default: sweep_results/compare-<short ids>)")
    return p


def cmd_presets(_: argparse.Namespace) -> None:
    summaries = preset_summaries()
    width = max(map(len, summaries))
    for name, line in summaries.items():
        print(f"{name:<{width}}  {line}")


def cmd_train(args: argparse.Namespace) -> None:
    import torch  # see the module's docstring: heavy imports after the input is checked

    from models.resnet.config import TrainConfig
    from models.resnet.trainer import Trainer

    try:
        config = TrainConfig(C=args.C, protocol=args.protocol, budget=args.budget, lr=args.lr,
                             batch_size=args.batch_size, eval_every=args.eval_every,
                             split_seed=args.split_seed, label_noise=args.label_noise, device=args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    torch.set_num_threads(args.threads)
    trainer = Trainer(config, seeds=[args.seed])
    started = time.perf_counter()
    last = None
    for evaluation in trainer.run():
        last = evaluation
    seconds = time.perf_counter() - started
    if last is None or not last.records:
        reason = next(iter(trainer.diverged.values()))[1] if trainer.diverged else "no evaluation"
        print(f"C={args.C} seed={args.seed}: diverged ({reason})")
        sys.exit(1)
    r = last.records[0]
    print(f"C={args.C} seed={args.seed} protocol={args.protocol} step={r.step} split={trainer.data.split_hash} "
          f"label_noise={args.label_noise} ({trainer.data.n_flipped} labels flipped)")
    print(f"train_error={r.train_error:.4f} train_error_clean={r.train_error_clean:.4f} "
          f"test_error={r.test_error:.4f} generalization_gap={r.generalization_gap:.4f} "
          f"train_loss={r.train_loss:.4f} test_loss={r.test_loss:.4f}")
    print(f"{trainer.ms_per_update:.3f} ms per update ({trainer.updates} updates, {seconds:.1f} s wall "
          f"including evaluations, {args.threads} thread(s), {args.device})")


def _prepare(spec: Any, args: argparse.Namespace) -> tuple[str, str]:
    """All checks that need no compute: tracking store reachable, Ray address reachable, GPUs and CPUs exist."""
    tracking_uri = preflight.resolve_tracking_uri(args.tracking_uri, spec.tracking.uri)
    address = preflight.resolve_address(args.address)
    try:
        preflight.check_reachable(tracking_uri)
        preflight.check_ray_address(address)
        preflight.check_local_gpus(spec, address)
        preflight.check_local_cpus(spec, address)
    except (TrackingError, SweepError) as exc:
        raise UsageError(str(exc)) from None
    return tracking_uri, address


def _connect(spec: Any, address: str, gpus_may_autoscale: bool = False) -> bool:
    """Ray at ``address``, checked to run the spec's trials; True when this command connected (and so ends the
    connection, :func:`_disconnect`), False when the host program had."""
    from sweep import driver  # see the module's docstring

    connected = False
    try:
        connected = driver.connect_ray(address)
        driver.check_cluster(spec, gpus_may_autoscale)
    except SweepError as exc:
        _disconnect(connected)
        raise UsageError(str(exc)) from None
    return connected


def _disconnect(connected: bool) -> None:
    """``ray.shutdown()`` when this command connected and has not yet: a local Ray it started stops, a cluster stays
    up. Done here, not left to Ray's exit hook, which first sleeps half a second for worker log lines in flight: a
    sweep's last ones came seconds before, while its figures were drawn."""
    if connected:
        import ray  # see the module's docstring

        if ray.is_initialized():
            ray.shutdown()


def _end(sweep: Any, results: Any, args: argparse.Namespace, connected: bool) -> None:
    """The sweep's table, figures and next steps, once Tune is done. Ray is no longer needed: the Ray this command
    connected is shut down meanwhile, in a thread (a local Ray's processes take over a second to exit, which
    ``ray.shutdown`` spends waiting; the analysis need not wait for it)."""
    with ThreadPoolExecutor(1) as pool:
        stopping = pool.submit(_disconnect, connected)
        try:
            _report(sweep, results, args)
        finally:
            stopping.result()


def _report(sweep: Any, results: Any, args: argparse.Namespace) -> None:
    from sweep.finish import finish_sweep, logging_share  # imports Ray and MLflow: see the module's docstring

    rows = finish_sweep(sweep, results)
    print_table(rows, sweep.spec.family.table_metrics)
    share = logging_share(results)
    if share is not None:
        print(f"MLflow logging took {100 * share:.2f}% of the trials' wall time")
    out = args.out or RESULTS_DIR / sweep.sweep_id
    analyzed = not args.no_analyze
    if analyzed:
        from analysis import NoTrialsError, analyze  # imports MLflow and matplotlib: see the module's docstring

        try:
            result = analyze(sweep.sweep_id, sweep.tracking_uri, out)
            figures = ", ".join(name for name in result.files if name.endswith(".png"))
            print(f"\nFigures and report: {out.resolve()}/ ({figures}, summary.md)")
        except NoTrialsError as exc:  # every trial diverged: the table above is the whole finding
            print(f"\nNo figures or report: nothing finished to plot ({exc})")
            analyzed = False
    print_next_steps(sweep.sweep_id, sweep.tracking_uri, analyzed=analyzed,
                     experiment_id=sweep.experiment_id)
    # A diverged trial is a finding, reported in the table; a trial Ray gave up on is an error.
    # A superseded run (a search trial lost with a killed driver, its configuration trained again) is neither.
    if any(row["status"] != "FINISHED" and not row["failure_reason"].startswith(("diverged", "superseded"))
           for row in rows):
        sys.exit(1)


def _warm_up(tracking_uri: str) -> None:
    """What a sweep needs before its first trial besides Ray: a new sqlite store's schema, the driver's imports
    (Ray Tune, MLflow; not torch, which only the trial workers import) and the digits (scikit-learn): seconds of
    CPU each."""
    # the warm-up is these imports: see the module's docstring
    from models.digits import digits_arrays
    from sweep import tracking

    tracking.init_store(tracking_uri)
    importlib.import_module("sweep.driver")
    digits_arrays()


def cmd_run(args: argparse.Namespace) -> None:
    try:
        spec, _ = load_spec(args.spec, args.overrides)
    except SpecError as exc:
        raise UsageError(str(exc)) from None
    tracking_uri, address = _prepare(spec, args)
    with ThreadPoolExecutor(1) as pool:  # Ray's start mostly waits on its own processes: use the time
        ready = pool.submit(_warm_up, tracking_uri)
        connected = _connect(spec, address, args.gpus_may_autoscale)
        ready.result()
    try:
        _run(spec, args, tracking_uri, connected)
    finally:
        _disconnect(connected)


def _run(spec: Any, args: argparse.Namespace, tracking_uri: str, connected: bool) -> None:
    from sweep import driver  # imported by cmd_run's warm-up already, while Ray started
    from sweep.plan import plan_trials

    storage = args.storage if "://" in args.storage else str(Path(args.storage).resolve())
    slots = driver.concurrent_slots(spec)
    sweep = driver.create_sweep(spec, args.spec, tracking_uri, storage)
    where = f"MLflow {tracking_uri}, experiment {spec.tracking.experiment or spec.name!r}"
    if spec.search.algorithm != "grid":
        print(f"[sweep] {sweep.sweep_id}: {spec.search.algorithm} search, {spec.search.num_samples} samples of "
              f"{len(spec.seed_list)} packed seeds each, {spec.search.scheduler} scheduler; {where}", flush=True)
    else:
        groups = plan_trials(spec, slots)
        runs = sum(len(g.seeds) for g in groups)
        print(f"[sweep] {sweep.sweep_id}: {runs} runs in {len(groups)} Ray trials; {where}", flush=True)
    results = driver.run_tuner(sweep, slots=slots)
    _end(sweep, results, args, connected)


def _existing_store(args: argparse.Namespace) -> str:
    """The tracking URI of a store that must already hold sweeps: from --tracking-uri / MLFLOW_TRACKING_URI
    (else ./mlflow.db), checked to exist (reading a store that is not there must not create it) and to answer."""
    tracking_uri = preflight.resolve_tracking_uri(args.tracking_uri, None)
    try:
        preflight.check_exists(tracking_uri)
        preflight.check_reachable(tracking_uri)
    except TrackingError as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    return tracking_uri


def cmd_resume(args: argparse.Namespace) -> None:
    from sweep import driver  # see the module's docstring

    # The spec, with its tracking.uri, is an artifact inside the store: everything is checked before anything
    # is written.
    tracking_uri = _existing_store(args)
    try:
        sweep = driver.load_sweep(args.sweep_id, tracking_uri)
        driver.check_resumable(sweep)
    except (TrackingError, SweepError) as exc:
        raise UsageError(str(exc)) from None
    _, address = _prepare(sweep.spec, args)
    connected = _connect(sweep.spec, address)
    try:
        print(f"[sweep] resuming {sweep.sweep_id} from {sweep.tune_path}", flush=True)
        driver.reopen_parent(sweep)
        try:
            results = driver.run_tuner(sweep, restore=True)
        except SweepError as exc:
            raise UsageError(str(exc)) from None
        _end(sweep, results, args, connected)
    finally:
        _disconnect(connected)


def cmd_analyze(args: argparse.Namespace) -> None:
    from mlflow import MlflowClient  # see the module's docstring

    from analysis import analyze
    from analysis.run import AxisError
    from record import TAG_SWEEP_ID, find_parent_run

    tracking_uri = _existing_store(args)
    try:
        sweep_id = args.sweep_id or find_parent_run(MlflowClient(tracking_uri)).data.tags[TAG_SWEEP_ID]
        # Each sweep's figures go to its own folder, so analysing "the latest" never overwrites another's.
        result = analyze(sweep_id, tracking_uri, args.out or RESULTS_DIR / sweep_id, x=args.x)
    except (TrackingError, LookupError, AxisError) as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    print(result)
    print_ui_steps(tracking_uri, result.data.parent.info.experiment_id)


def cmd_compare(args: argparse.Namespace) -> None:
    from analysis import compare  # imports MLflow and matplotlib: see the module's docstring

    tracking_uri = _existing_store(args)
    try:
        compared = compare.load(args.sweep_ids, tracking_uri)
    except (TrackingError, LookupError, compare.CompareError) as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    out = args.out or RESULTS_DIR / compare.default_folder(args.sweep_ids)
    files = compare.write(compared, out)
    print("\n".join(f"  {c.label}" for c in compared))
    print(f"Figure and table: {out.resolve()}/ ({', '.join(name for name in files if not name.endswith('.pdf'))})")


def command(name: str) -> str:
    """How to call this environment's ``name`` (``sweep``, ``mlflow``) from the current folder, as printed.

    The bare name only when the shell would find this very program on PATH (the venv is activated);
    else its path, relative to the current folder when it lies below it (``.venv/bin/sweep``), so every
    printed command runs as printed in the user's shell.
    """
    program = Path(sys.executable).parent / name
    if not program.exists():
        return name
    found = shutil.which(name)
    if found and Path(found).resolve() == program.resolve():
        return name
    try:
        return shlex.quote(str(program.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(program))


def print_table(rows: list[dict[str, Any]],
                columns: tuple[tuple[str, str], ...] = (("train_error", "train_error"), ("test_error", "test_error"),
                                                        ("generalization_gap", "gap"))) -> None:
    """One line per run: its grid point (every axis value), seed, the final value of each (metric, title) of
    ``columns`` (the family's ``table_metrics``; the ResNet's by default), status."""
    width = max([len("grid point"), *(len(row["grid_point"]) for row in rows)])
    widths = [max(8, len(title) + 1) for _, title in columns]
    titles = " ".join(f"{title:>{w}}" for (_, title), w in zip(columns, widths, strict=True))
    print(f"\n{'grid point':<{width}} {'seed':>5} {titles}  status")
    for row in rows:
        reason = f"  ({row['failure_reason']})" if row["failure_reason"] else ""
        values = " ".join(f"{row[key]:>{w}.4f}" for (key, _), w in zip(columns, widths, strict=True))
        mark = f"  {row['mark']}" if row.get("mark") else ""
        print(f"{row['grid_point']:<{width}} {row['seed']:>5} {values}  {row['status']}{mark}{reason}")


def print_ui_steps(tracking_uri: str, experiment_id: str) -> None:
    """How to open this experiment's runs in the MLflow UI: the command that starts it (for a local store)
    and the link to the model-training view."""
    from sweep.mlflow_ui import runs_url  # imports MLflow: see the module's docstring

    print("\nOpen the MLflow UI:")
    if not tracking_uri.startswith(("http://", "https://")):
        print(f"  {command('mlflow')} ui --backend-store-uri {shlex.quote(tracking_uri)}")
    print(f"  then open {runs_url(experiment_id, tracking_uri)}   # this sweep's runs, model-training view")


def print_next_steps(sweep_id: str, tracking_uri: str, analyzed: bool, experiment_id: str) -> None:
    print_ui_steps(tracking_uri, experiment_id)
    default = tracking_uri.endswith(str(Path("mlflow.db").resolve()))
    uri_flag = "" if default else f" --tracking-uri {shlex.quote(tracking_uri)}"
    print(f"{'Re-analyze' if analyzed else 'Analyze'} this sweep:\n  {command('sweep')} analyze {sweep_id}{uri_flag}")


COMMANDS = {"presets": cmd_presets, "train": cmd_train, "run": cmd_run, "resume": cmd_resume,
            "analyze": cmd_analyze, "compare": cmd_compare}


def main(argv: list[str] | None = None) -> None:
    # MLflow draws a progress bar on stderr for every artifact download once tqdm is installed (optuna brings
    # it): it would break the one-line errors and clutter `sweep resume`/`analyze`.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        sys.exit(2)


def command_line() -> None:
    """The ``sweep`` program (pyproject's console script): :func:`main` on the command line's arguments."""
    try:
        main()
    finally:
        # When the program ends, CPython's teardown runs its cycle collector over every object the command
        # imported or made (Ray, MLflow with SQLAlchemy, pandas, matplotlib): ~2 s of CPU after a sweep, measured,
        # with nothing left to finalise (runs ended, files closed, Ray shut down, logging flushed by its own exit
        # hook). Frozen objects are left to the OS. Not in main(), which tests call in their own process.
        gc.freeze()


if __name__ == "__main__":
    command_line()
