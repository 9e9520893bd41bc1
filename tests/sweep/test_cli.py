"""Bad input: one line naming what was wrong and what is allowed, exit 2, before Ray or MLflow are touched."""

import socket
import subprocess
import sys

import pytest

from record import SPEC_ARTIFACT
from sweep import cli, driver


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_compute(monkeypatch, tmp_path):
    """Fail the test if a bad input gets as far as starting Ray or creating MLflow runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def forbidden(*_a, **_k):
        raise AssertionError("compute started on bad input")

    monkeypatch.setattr(driver, "connect_ray", forbidden)
    monkeypatch.setattr(driver, "create_sweep", forbidden)
    return tmp_path


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    return exit_info.value.code, err


CASES = [
    (["run", "hw3"], ["unknown preset 'hw3'", "did you mean 'hw2'", "smoke"]),
    (["run", "smoke", "--set", "modle.C=1"], ["unknown key 'modle'", "did you mean 'model'"]),
    (["run", "smoke", "--set", "resources.gpus=1"], ["unknown key 'resources.gpus'", "did you mean 'gpu'"]),
    (["run", "smoke", "--set", "budget=lots"], ["'budget'", "'lots'", "valid integer"]),
    (["run", "smoke", "--set", "model.C=0"], ["'model.C'", "greater than 0", "positive integer"]),
    (["run", "smoke", "--set", "model.C=2.5"], ["'model.C'", "valid integer"]),
    (["run", "smoke", "--set", "model.C=[1,-4]"], ["'model.C[1]'", "greater than 0"]),
    (["run", "smoke", "--set", "seeds=[]"], ["'seeds'", "non-empty list"]),
    (["run", "smoke", "--set", "seeds=0"], ["'seeds'", "greater than 0"]),
    (["run", "smoke", "--set", "lr=0"], ["'lr'", "greater than 0"]),
    (["run", "smoke", "--set", "lr=-0.1"], ["'lr'", "greater than 0"]),
    (["run", "smoke", "--set", "batch_size=899"], ["'batch_size'", "larger than the training half (898"]),
    (["run", "smoke", "--set", "budget=0"], ["'budget'", "greater than 0"]),
    (["run", "smoke", "--set", "eval_every=51"], ["eval_every 51 is larger than the budget 50"]),
    (["run", "smoke", "--set", "seeds"], ["malformed --set 'seeds'", "key=value"]),
    (["run", "smoke", "--set", "=4"], ["malformed --set '=4'"]),
    (["run", "smoke", "--set", "model.C=[1,2"], ["malformed --set", "not valid YAML"]),
    (["run", "missing.yaml"], ["spec file 'missing.yaml' does not exist"]),
    (["run", "smoke", "--set", "resources.gpu=1"], ["resources.gpu=1.0 requested", "no GPU"]),
    # issue 15 item 4 and issue 12: empty or repeated grid lists, non-finite numbers, unsafe names, bad noise
    (["run", "smoke", "--set", "model.C=[]"], ["'model.C'", "empty list", "non-empty list of distinct"]),
    (["run", "smoke", "--set", "lr=[]"], ["'lr'", "empty list"]),
    (["run", "smoke", "--set", "lr=.inf"], ["'lr'", "finite number"]),
    (["run", "smoke", "--set", "lr=.nan"], ["'lr'", "finite number"]),
    (["run", "smoke", "--set", "model.C=[4,4]"], ["'model.C'", "value 4 is repeated"]),
    (["run", "smoke", "--set", "lr=[0.1,0.1]"], ["'lr'", "value 0.1 is repeated"]),
    (["run", "smoke", "--set", "seeds=[1,1]"], ["'seeds'", "value 1 is repeated"]),
    (["run", "smoke", "--set", "name=a/b"], ["'name'", "'a/b'", "letters, digits, '.', '_' and '-'"]),
    (["run", "smoke", "--set", "name=it's"], ["'name'", "letters, digits"]),
    (["run", "smoke", "--set", "data.label_noise=1"], ["'data.label_noise'", "a fraction in [0, 1)"]),
    (["run", "smoke", "--set", "data.label_noise=-0.1"], ["'data.label_noise'", "a fraction in [0, 1)"]),
    (["run", "smoke", "--set", "data.label_noise=[0,1.5]"], ["'data.label_noise[1]'", "less than 1"]),
]

# issue 14: the search block, refused before Ray starts. A random search of lr on smoke's C=[1, 4] grid.
_RANDOM = ["--set", "search.algorithm=random", "--set", "search.num_samples=2"]
_LR = ["--set", "search.space={lr: {loguniform: [0.001, 1]}}"]
SEARCH_CASES = [
    (["run", "smoke", "--set", "search.algorithm=bayes"], ["'search.algorithm'", "'bayes'", "'optuna' or 'refine'"]),
    (["run", "smoke", "--set", "search.scheduler=hyperband"], ["'search.scheduler'", "'fifo' or 'asha'"]),
    (["run", "smoke", *_RANDOM, "--set", "search.space={lr: {normal: [0, 1]}}"],
     ["unknown distribution 'normal'", "loguniform, uniform, randint, choice"]),
    (["run", "smoke", *_RANDOM, "--set", "search.space={lr: {uniform: [0.5, 0.5]}}"],
     ["search.space.lr.uniform", "low 0.5 must be below high 0.5"]),
    (["run", "smoke", *_RANDOM, "--set", "search.space={lr: {uniform: [1, 0.1]}}"], ["low 1 must be below high 0.1"]),
    (["run", "smoke", *_RANDOM, "--set", "search.space={lr: {loguniform: [0, 1]}}"],
     ["search.space.lr.loguniform", "low 0 must be > 0"]),
    (["run", "smoke", *_RANDOM, "--set", "search.space={width: {uniform: [1, 2]}}"],
     ["'width' is not a searchable key of family resnet", "lr, batch_size"]),
    (["run", "smoke", *_LR, "--set", "search.algorithm=random", "--set", "search.num_samples=0"],
     ["search.num_samples must be an integer > 0"]),
    (["run", "smoke", *_LR, "--set", "search.algorithm=random", "--set", "search.num_samples=-3"],
     ["search.num_samples must be an integer > 0"]),
    (["run", "smoke", *_RANDOM, *_LR, "--set", "data.val_fraction=0"], ["'data.val_fraction'", "greater than 0"]),
    (["run", "smoke", *_RANDOM, *_LR, "--set", "data.val_fraction=0.6"], ["'data.val_fraction'", "0.5"]),
    (["run", "smoke", *_RANDOM, *_LR, "--set", "search.metric=test_error"],
     ["search.metric 'test_error' is not a validation metric", "val_error, val_loss"]),
    (["run", "smoke", *_RANDOM, *_LR, "--set", "search.metric=accuracy"], ["search.metric 'accuracy'"]),
    (["run", "smoke", "--set", "search.algorithm=optuna", *_LR], ["optuna cannot take grid lists (C)"]),
    (["run", "smoke", *_RANDOM, "--set", "search.space={lr: {loguniform: [0.001, 1]}}", "--set", "lr=[0.1,0.2]"],
     ["'lr' is given both as a grid list and in search.space"]),
    (["run", "smoke", *_RANDOM, "--set", "search.space={batch_size: {choice: [32, 800]}}"],
     ["search.space.batch_size.choice can draw 800", "718 images trained on", "allowed: 1..718"]),
    # issue 27: fixed and grid values against the images a validation split leaves, whatever the search
    (["run", "smoke", "--set", "search.scheduler=asha", "--set", "batch_size=800"],
     ["batch_size 800 is larger than the 718 images trained on", "allowed: 1..718"]),
    (["run", "smoke", "--set", "search.scheduler=asha", "--set", "data.val_fraction=0.5",
      "--set", "batch_size=[128,449,500]"], ["batch_size 500 is larger than the 449 images trained on"]),
    # issue 27: every value a searcher can draw passes the key's own rules (the grid's validation)
    (["run", "smoke", *_RANDOM, "--set", "model.C=1", "--set", "search.space={C: {choice: [0, 4]}}"],
     ["search.space.C.choice can draw 0", "'model.C'", "greater than 0"]),
    (["run", "smoke", *_RANDOM, "--set", "model.C=1", "--set", "search.space={C: {choice: [2.5, 4]}}"],
     ["search.space.C.choice can draw 2.5", "valid integer"]),
    (["run", "smoke", *_RANDOM, "--set", "search.space={lr: {uniform: [-1, 1]}}"],
     ["search.space.lr.uniform can draw -1", "'lr'", "greater than 0"]),
    (["run", "smoke", *_RANDOM, "--set", "search.space={label_noise: {uniform: [0.5, 2]}}"],
     ["search.space.label_noise.uniform can draw values just below 2", "'data.label_noise'", "less than 1"]),
    (["run", "smoke", *_RANDOM, "--set", "search.space={batch_size: {choice: [0, 64]}}"],
     ["search.space.batch_size.choice can draw 0", "greater than 0"]),
    (["run", "smoke", *_RANDOM, "--set", "search.space={batch_size: {choice: [64, 128.0]}}"],
     ["search.space.batch_size.choice can draw 128.0", "valid integer"]),
    (["run", "smoke", *_RANDOM, "--set", "search.space={lr: {choice: ['a', 0.1]}}"],
     ["search.space.lr.choice can draw 'a'", "valid number"]),
    (["run", "smoke", *_RANDOM, "--set", "search.space={batch_size: {randint: [1, 720]}}"],
     ["search.space.batch_size.randint can draw 719 (its high 720 is exclusive)", "718 images trained on"]),
    # issue 27: a space next to a grid is refused whatever the scheduler; pack: off cannot split a sample
    (["run", "smoke", "--set", "search.scheduler=asha", *_LR], ["search.space is given but search.algorithm is grid"]),
    (["run", "smoke", *_RANDOM, *_LR, "--set", "pack=off"], ["pack: off cannot go with search.algorithm random"]),
    # a refine search chooses the knob alone, from a list of integers, within num_samples
    (["run", "refine-threshold", "--set", "model.C=4"], ["refine needs model.C as a list of at least two integers"]),
    (["run", "refine-threshold", "--set", "search.num_samples=3"], ["search.num_samples 3 is below the 4 values"]),
    (["run", "refine-threshold", "--set", "lr=[0.05,0.1]"], ["refine chooses model.C alone", "not lr"]),
    (["run", "refine-threshold", "--set", "search.scheduler=asha"], ["refine trains every value", "fifo"]),
    (["run", "refine-threshold", *_LR], ["refine chooses model.C alone", "not lr"]),
    (["run", "smoke", *_RANDOM, "--set", "model.C=2", "--set", "search.space={C: {uniform: [1, 8]}}"],
     ["search.space.C.uniform can draw 1.0", "valid integer"]),
    (["run", "smoke", *_RANDOM], ["search.algorithm random needs a search.space"]),
    (["run", "em", "--set", "search.scheduler=asha"],
     ["family bernoulli_mixture logs no validation metric", "cannot be searched"]),
]
CASES += SEARCH_CASES


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[" ".join(c[0][1:]) for c in CASES])
def test_bad_input_exits_2_with_one_line(no_compute, capsys, argv, expected):
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sweep: error: ")
    for fragment in expected:
        assert fragment in err
    assert not (no_compute / "mlflow.db").exists()


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.mark.skipif(_cuda_devices() > 0, reason="this machine has a GPU: resources.gpu=1 is valid here")
def test_gpu_requested_on_a_machine_without_one(no_compute, capsys):
    code, err = run_cli(["run", "smoke", "--set", "resources.gpu=1"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "resources.gpu=1.0 requested" in err and "no GPU" in err
    assert not (no_compute / "mlflow.db").exists()


def test_scientific_notation_in_a_yaml_file_is_a_number():
    """PyYAML reads 1e-3 as a string (YAML 1.1 wants 1.0e-3); a spec file is read as a user means it."""
    from sweep.spec import load_yaml, validate

    raw = load_yaml("name: s\nmodel: {C: 4}\nseeds: 1\nlr: 2E-1\n"
                    "search: {algorithm: random, space: {lr: {loguniform: [1e-3, 1]}}}\n")
    assert raw["search"]["space"]["lr"]["loguniform"] == [0.001, 1] and raw["lr"] == 0.2
    assert validate(raw).search.space["lr"] == {"loguniform": [0.001, 1]}
    assert load_yaml("[1e3, 1.5, 10, .inf, '1e-3', 1_000]") == [1000.0, 1.5, 10, float("inf"), "1e-3", 1000]


def test_a_randint_space_may_reach_its_exclusive_bound(no_compute):
    """randint: [1, 719] draws 1..718, all of which fit the 718 images a validation split leaves."""
    from sweep.spec import load_spec

    spec, _ = load_spec("smoke", ["search.algorithm=random", "search.space={batch_size: {randint: [1, 719]}}"])
    assert spec.search.space["batch_size"] == {"randint": [1, 719]}


def test_yaml_that_does_not_parse(no_compute, capsys):
    (no_compute / "broken.yaml").write_text("name: x\nmodel: {C: [1, 2\n")
    code, err = run_cli(["run", "broken.yaml"], capsys)
    assert code == 2 and "is not valid YAML" in err and "line" in err


def test_yaml_that_is_not_a_mapping(no_compute, capsys):
    (no_compute / "list.yaml").write_text("- 1\n- 2\n")
    code, err = run_cli(["run", "list.yaml"], capsys)
    assert code == 2 and "must be a YAML mapping" in err


def test_unreachable_tracking_uri(no_compute, capsys):
    uri = f"http://127.0.0.1:{closed_port()}"
    code, err = run_cli(["run", "smoke", "--tracking-uri", uri], capsys)
    assert code == 2 and f"tracking URI {uri} is unreachable" in err


def test_unreachable_ray_address(no_compute, capsys):
    address = f"127.0.0.1:{closed_port()}"
    code, err = run_cli(["run", "smoke", "--address", address], capsys)
    assert code == 2 and f"Ray address {address} is unreachable" in err


def test_malformed_ray_address(no_compute, capsys):
    code, err = run_cli(["run", "smoke", "--address", "nowhere"], capsys)
    assert code == 2 and "malformed" in err


def test_tracking_uri_in_missing_folder(no_compute, capsys):
    code, err = run_cli(["run", "smoke", "--tracking-uri", "sqlite:////no/such/dir/m.db"], capsys)
    assert code == 2 and "does not exist" in err


def test_console_script_exit_code_and_stderr(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "run", "smoke", "--set", "lr=0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "'lr'" in proc.stderr and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("argv", "code"), [(["presets"], 0), (["run", "smoke", "--set", "lr=0"], 2)])
def test_the_program_ends_with_its_objects_frozen(tmp_path, argv, code):
    """The ``sweep`` program (the console script's function) exits with main()'s code and leaves its objects out of
    the teardown's cycle collection (gc.freeze: ~2 s of CPU at the end of a sweep otherwise), seen from an exit
    hook, which runs after the program's last line."""
    program = ("import atexit, gc, sys; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); "
               f"from sweep.cli import command_line; sys.argv = ['sweep', *{argv!r}]; command_line()")
    proc = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.splitlines()[-1] == "frozen True"


_END_PROGRAM = """
import ray
from sweep import cli, driver

def report(sweep, results, args):
    print("reporting", ray.is_initialized())
    if sweep == "fail":
        raise RuntimeError("the report failed")

cli._report = report
driver.connect_ray("local")
cli._end("ok", None, None, connected=False)
print("host's Ray kept", ray.is_initialized())
try:
    cli._end("fail", None, None, connected=True)
except RuntimeError as exc:
    print("raised", exc)
print("own Ray stopped", not ray.is_initialized())
cli._disconnect(True)
print("stopped twice")
"""


def test_the_end_of_a_sweep_stops_its_own_ray_whatever_the_report_does(tmp_path):
    """After Tune, the sweep's report runs while the Ray the command connected shuts down in a thread (its processes
    take a second to exit): by the end Ray is stopped, also when the report raises, and the error still
    surfaces; a Ray the host program connected is left alone; a second shutdown is a no-op."""
    proc = subprocess.run([sys.executable, "-c", _END_PROGRAM], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("(")]  # "(raylet) ..." lines aside
    assert lines[:2] == ["reporting True", "host's Ray kept True"]
    assert lines[2] in ("reporting True", "reporting False")  # the shutdown runs beside the report: either order
    assert lines[3:] == ["raised the report failed", "own Ray stopped True", "stopped twice"]


def test_the_driver_does_not_import_torch():
    """A sweep's driver never trains, so it must not pay torch's import (~2.5 s of CPU, on the critical path of
    every sweep's start): only the trial workers import it (sweep.trainable imports it inside its functions)."""
    driver_modules = "sweep.cli, sweep.driver, sweep.finish, sweep.provenance, sweep.trainable, analysis"
    proc = subprocess.run([sys.executable, "-c", f"import sys, {driver_modules}; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"]


def test_presets_listed_one_line_each(capsys):
    cli.main(["presets"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["double-descent", "double-descent-epochs", "em", "hw2", "hw2-epochs",
                                               "refine-threshold", "search-lr", "smoke", "width"]
    assert all(len(ln.split(maxsplit=1)[1]) > 20 for ln in lines)


def test_train_command_prints_metrics_and_time(capsys):
    cli.main(["train", "--C", "2", "--budget", "50", "--eval-every", "25"])
    out = capsys.readouterr().out
    assert "train_error=" in out and "test_error=" in out and "ms per update" in out


def test_a_stored_spec_that_the_rules_now_refuse_is_one_line(tmp_path):
    """A sweep made before a validation rule existed (here: a repeated width, a name with a space) cannot be
    resumed; load_sweep says so in one line (the CLI's exit 2) instead of a traceback."""
    from mlflow import MlflowClient

    from record import ROLE_PARENT, TAG_ROLE, TAG_SWEEP_ID, TAG_TUNE_PATH

    uri = f"sqlite:///{tmp_path}/old.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("old"), run_name="old sweep-1", tags={
        TAG_ROLE: ROLE_PARENT, TAG_SWEEP_ID: "old sweep-1", TAG_TUNE_PATH: str(tmp_path / "tune")})
    client.log_text(run.info.run_id, "name: old sweep\nmodel: {C: [4, 4]}\nseeds: 1\n", SPEC_ARTIFACT)
    with pytest.raises(driver.SweepError, match="no longer valid") as info:
        driver.load_sweep(None, uri)
    assert "\n" not in str(info.value) and "'name'" in str(info.value)


# -- issue 15: resources larger than the machine, tracking URI forms, resume / analyze ---------------------

def test_cpu_request_larger_than_this_machine(no_compute, capsys):
    import os

    cpus = os.cpu_count() + 1  # more than Ray's own count, which never exceeds the machine's
    code, err = run_cli(["run", "smoke", "--set", f"resources.cpu={cpus}"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"resources.cpu={cpus}" in err and "CPUs of this machine" in err
    assert not (no_compute / "mlflow.db").exists()


def test_sqlite_uri_with_two_slashes_is_refused(no_compute, capsys):
    code, err = run_cli(["run", "smoke", "--tracking-uri", "sqlite://rel.db"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "sqlite:///mlflow.db" in err and "three slashes" in err
    assert not list(no_compute.iterdir())


def test_file_store_refused_unless_mlflow_allows_it(no_compute, capsys):
    code, err = run_cli(["run", "smoke", "--tracking-uri", "file:./mlruns"], capsys)
    assert code == 2 and err.count("\n") == 1 and "MLFLOW_ALLOW_FILE_STORE=true" in err
    assert not list(no_compute.iterdir())


def test_relative_file_uri_is_a_file_store_at_that_folder(no_compute, monkeypatch):
    from mlflow import MlflowClient

    from sweep import preflight as store

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = store.resolve_tracking_uri("file:./mlruns", None)
    store.check_reachable(uri)
    MlflowClient(uri).create_experiment("e")
    assert (no_compute / "mlruns").is_dir()
    assert [p.name for p in no_compute.iterdir()] == ["mlruns"]  # not a folder named "file:."


@pytest.mark.parametrize("command", ["analyze", "resume"])
def test_reading_a_store_that_does_not_exist_creates_nothing(no_compute, capsys, command):
    uri = f"sqlite:///{no_compute}/nowhere.db"
    code, err = run_cli([command, "--tracking-uri", uri], capsys)
    assert code == 2 and err.count("\n") == 1 and "no MLflow store at" in err
    assert not list(no_compute.iterdir())


@pytest.mark.parametrize("command", ["analyze", "resume"])
def test_an_id_asked_of_a_store_without_sweeps_is_named(no_compute, capsys, command):
    """Issue 26: a store that exists but holds no sweep; the one line names the id asked for."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{no_compute}/mlflow.db"
    MlflowClient(uri).search_experiments()  # the store's schema, no run
    capsys.readouterr()  # MLflow's own lines while it made the schema
    code, err = run_cli([command, "no-such-id", "--tracking-uri", uri], capsys)
    assert code == 2 and err.count("\n") == 1 and "'no-such-id'" in err and "no sweep is recorded" in err


def recorded_sweep(folder, status: str) -> tuple[str, str, str]:
    """A sweep as `sweep run` leaves it in MLflow (parent run with its spec and Tune path), whose Ray Tune
    folder does not exist; the parent ends with ``status``. Returns (uri, sweep_id, parent run id)."""
    import yaml
    from mlflow import MlflowClient

    from record import ROLE_PARENT, TAG_ROLE, TAG_SWEEP_ID, TAG_TUNE_PATH
    from sweep.spec import load_spec

    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    spec, _ = load_spec("smoke", [])
    experiment = client.create_experiment("smoke")
    sweep_id = "smoke-20260101-000000-abcd"
    parent = client.create_run(experiment, run_name=sweep_id, tags={
        TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_PARENT, TAG_TUNE_PATH: str(folder / "ray_results" / sweep_id)})
    client.log_text(parent.info.run_id, yaml.safe_dump(spec.model_dump(mode="json")), SPEC_ARTIFACT)
    client.set_terminated(parent.info.run_id, status)
    return uri, sweep_id, parent.info.run_id


def test_resume_without_tune_state_writes_nothing(no_compute, capsys):
    from mlflow import MlflowClient

    uri, sweep_id, parent = recorded_sweep(no_compute, "KILLED")
    capsys.readouterr()  # MLflow's own log lines from creating the store
    code, err = run_cli(["resume", sweep_id, "--tracking-uri", uri], capsys)
    assert code == 2 and err.count("\n") == 1 and "no Ray Tune state at" in err
    assert MlflowClient(uri).get_run(parent).info.status == "KILLED"  # not reopened


def test_resume_refuses_a_finished_sweep(no_compute, capsys):
    from mlflow import MlflowClient

    uri, sweep_id, parent = recorded_sweep(no_compute, "FINISHED")
    capsys.readouterr()  # MLflow's own log lines from creating the store
    code, err = run_cli(["resume", sweep_id, "--tracking-uri", uri], capsys)
    assert code == 2 and err.count("\n") == 1 and f"sweep {sweep_id} already FINISHED" in err
    assert MlflowClient(uri).get_run(parent).info.status == "FINISHED"
