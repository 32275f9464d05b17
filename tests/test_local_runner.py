"""The local runner on small hand-written definitions, with fake steps (python3 -c ...), not the real ones."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from pipeline.errors import LocalRunError, UsageError
from pipeline.definition.expressions import Scope
from pipeline.definition.graph import plan_steps
from pipeline.definition.parameters import ParameterOverride, parse_param_args, resolve_parameters
from pipeline.errors import DefinitionError
from pipeline.local import run_local
from pipeline.local.jobs import gather_model_files

# A processing job: upper-cases every input file into one output file, then appends its arguments.
PROCESS_CODE = """
import os, pathlib, sys
root = pathlib.Path(os.environ['ALLPAIRS_OPT_ML'])
text = ''.join(p.read_text() for p in sorted((root / 'processing/input/data').rglob('*')) if p.is_file())
(root / 'processing/output/result/result.txt').write_text(text.upper() + ' ' + ' '.join(sys.argv[1:]))
"""

# A training host: reads its identity, the channel and a hyperparameter; writes a checkpoint and a model file.
TRAIN_CODE = """
import json, os, pathlib, sys, time
root = pathlib.Path(os.environ['ALLPAIRS_OPT_ML'])
host = json.loads((root / 'input/config/resourceconfig.json').read_text())['current_host']
k = json.loads((root / 'input/config/hyperparameters.json').read_text())['k']
data = (root / 'input/data/train/result.txt').read_text()
(root / 'checkpoints' / f'ckpt-{host}').write_text(host)
(root / 'output').mkdir(exist_ok=True)
(root / 'output/cores.json').write_text(json.dumps([sorted(os.sched_getaffinity(0)), os.environ['OMP_NUM_THREADS']]))
if host == os.environ.get('SLOW_HOST'):
    time.sleep(60)
if host == os.environ.get('FAIL_HOST'):
    print('some noise', file=sys.stderr)
    (root / 'output').mkdir(exist_ok=True)
    (root / 'output/failure').write_text('train: boom on ' + host + '\\nsecond line')
    sys.exit(1)
(root / 'model' / os.environ['MODEL_NAME'].format(host=host)).write_text(data + ' k=' + k)
"""


def out_uri(*leaf):
    return {"Std:Join": {"On": "/", "Values": [{"Get": "Parameters.OutputPrefix"}, {"Get": "Execution.PipelineExecutionId"}, *leaf]}}


def make_definition(input_uri, output_prefix, count=3, environment=None, compression="NONE"):
    """Two steps, listed consumer first, so the run order has to come from the references."""
    train = {
        "Name": "Train",
        "Type": "Training",
        "Arguments": {
            "AlgorithmSpecification": {"TrainingImage": "img", "TrainingInputMode": "File",
                                       "ContainerEntrypoint": ["python3", "-c", TRAIN_CODE]},
            "HyperParameters": {"k": {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.K"}]}}},
            "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3DataDistributionType": "FullyReplicated",
                "S3Uri": {"Get": "Steps.Prep.ProcessingOutputConfig.Outputs['result'].S3Output.S3Uri"}}}}],
            "OutputDataConfig": {"S3OutputPath": out_uri("model"), "CompressionType": compression},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": {"Get": "Parameters.InstanceCount"}},
            "CheckpointConfig": {"S3Uri": out_uri("checkpoints"), "LocalPath": "/opt/ml/checkpoints"},
            "Environment": {"MODEL_NAME": "shard-{host}.txt", **(environment or {})},
        },
    }
    prep = {
        "Name": "Prep",
        "Type": "Processing",
        "Arguments": {
            "ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1}},
            "AppSpecification": {"ImageUri": "img", "ContainerEntrypoint": ["python3", "-c", PROCESS_CODE],
                                 "ContainerArguments": ["--k", {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.K"}]}},
                                                        {"Get": "Execution.PipelineExecutionId"}]},
            "ProcessingInputs": [{"InputName": "data", "S3Input": {
                "S3Uri": {"Get": "Parameters.InputData"}, "LocalPath": "/opt/ml/processing/input/data",
                "S3DataType": "S3Prefix", "S3InputMode": "File", "S3CompressionType": "None"}}],
            "ProcessingOutputConfig": {"Outputs": [{"OutputName": "result", "S3Output": {
                "S3Uri": out_uri("result"), "LocalPath": "/opt/ml/processing/output/result", "S3UploadMode": "EndOfJob"}}]},
        },
    }
    return {
        "Version": "2020-12-01",
        "Parameters": [
            {"Name": "InputData", "Type": "String", "DefaultValue": input_uri},
            {"Name": "OutputPrefix", "Type": "String", "DefaultValue": output_prefix},
            {"Name": "InstanceCount", "Type": "Integer", "DefaultValue": count},
            {"Name": "K", "Type": "Integer", "DefaultValue": 5},
            {"Name": "MinScore", "Type": "Float", "DefaultValue": 0.5},
            {"Name": "Status", "Type": "String", "DefaultValue": "Approved", "EnumValues": ["Approved", "Rejected"]},
        ],
        "Steps": [train, prep],
    }


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "in" / "matrix.txt"
    path.parent.mkdir()
    path.write_text("abc")
    return path


def run(definition, tmp_path, **parameters):
    return run_local(json.dumps(definition), parameters, workdir=tmp_path / "work", pipeline_name="demo")


# ---- expressions ----------------------------------------------------------------------------------------------


def test_join_stringifies_values_as_sagemaker_does():
    scope = Scope({"N": 3, "F": 0.5, "B": True, "S": "x"}, {"PipelineExecutionId": "local-1"}, {})
    join = {"Std:Join": {"On": "/", "Values": [{"Get": "Parameters.N"}, {"Get": "Parameters.F"}, {"Get": "Parameters.B"},
                                               {"Get": "Parameters.S"}, {"Get": "Execution.PipelineExecutionId"}, 7]}}
    assert scope.resolve(join, "here") == "3/0.5/true/x/local-1/7"


def test_get_resolves_parameters_and_step_properties_inside_nested_arguments():
    scope = Scope({"N": 3}, {}, {"A": {"ModelArtifacts.S3ModelArtifacts": "/m"}})
    node = {"x": [{"Get": "Parameters.N"}, {"Get": "Steps.A.ModelArtifacts.S3ModelArtifacts"}], "y": "plain"}
    assert scope.resolve(node, "here") == {"x": [3, "/m"], "y": "plain"}


def test_property_paths_accept_either_quote_style():
    scope = Scope({}, {}, {"P": {"ProcessingOutputConfig.Outputs['o'].S3Output.S3Uri": "/o"}})
    assert scope.resolve({"Get": 'Steps.P.ProcessingOutputConfig.Outputs["o"].S3Output.S3Uri'}, "here") == "/o"


def test_steps_are_ordered_by_their_references(tmp_path):
    plans = plan_steps(make_definition("in", "out"))
    assert [p.name for p in plans] == ["Prep", "Train"]
    assert plans[1].depends_on == ("Prep",)


def test_unknown_step_property_is_refused_before_anything_runs():
    definition = make_definition("in", "out")
    channel = definition["Steps"][0]["Arguments"]["InputDataConfig"][0]["DataSource"]["S3DataSource"]
    channel["S3Uri"] = {"Get": "Steps.Prep.ProcessingOutputConfig.Outputs['chunks'].S3Output.S3Uri"}
    with pytest.raises(DefinitionError) as exc:
        plan_steps(definition)
    assert str(exc.value) == (
        "step Train, Arguments.InputDataConfig[0].DataSource.S3DataSource.S3Uri: "
        "\"Steps.Prep.ProcessingOutputConfig.Outputs['chunks'].S3Output.S3Uri\" is not a property of step Prep "
        "(it has: ProcessingJobName, ProcessingOutputConfig.Outputs['result'].S3Output.S3Uri); "
        "the compiled definition and pipeline/local disagree: report this as a bug in one of them"
    )


def test_unknown_parameter_reference_names_step_and_json_path():
    definition = make_definition("in", "out")
    definition["Steps"][1]["Arguments"]["AppSpecification"]["ContainerArguments"][1]["Std:Join"]["Values"][0] = {
        "Get": "Parameters.TopK"}
    with pytest.raises(DefinitionError) as exc:
        plan_steps(definition)
    assert str(exc.value) == (
        "step Prep, Arguments.AppSpecification.ContainerArguments[1].Std:Join.Values[0]: \"Parameters.TopK\" names no "
        "parameter (parameters: InputData, InstanceCount, K, MinScore, OutputPrefix, Status); "
        "the compiled definition and pipeline/local disagree: report this as a bug in one of them"
    )


def test_json_get_is_rejected_as_unsupported():
    definition = make_definition("in", "out")
    definition["Steps"][0]["Arguments"]["HyperParameters"]["k"] = {"Std:JsonGet": {"PropertyFile": "x", "Path": "y"}}
    with pytest.raises(DefinitionError) as exc:
        plan_steps(definition)
    assert str(exc.value) == (
        "step Train, Arguments.HyperParameters.k: Std:JsonGet (a property-file lookup) is not supported by the "
        "local runner; the compiled definition and pipeline/local disagree: report this as a bug in one of them"
    )


def test_integer_parameter_in_a_string_field_is_refused():
    definition = make_definition("in", "out")
    definition["Steps"][0]["Arguments"]["HyperParameters"]["k"] = {"Get": "Parameters.K"}
    with pytest.raises(DefinitionError) as exc:
        plan_steps(definition)
    assert str(exc.value).startswith(
        'step Train, Arguments.HyperParameters.k: is Integer {"Get": "Parameters.K"} where SageMaker requires a string '
        "(convert it with .to_string())"
    )


def test_a_dependency_cycle_is_refused():
    definition = make_definition("in", "out")
    definition["Steps"][1]["DependsOn"] = ["Train"]
    with pytest.raises(DefinitionError, match="steps Train, Prep depend on each other in a cycle"):
        plan_steps(definition)


# ---- parameters ---------------------------------------------------------------------------------------------


def usage_error(definition, *args):
    with pytest.raises(UsageError) as exc:
        resolve_parameters(definition, parse_param_args(list(args)))
    return str(exc.value)


def test_overrides_are_typed_and_later_ones_win():
    definition = make_definition("in", "out")
    spec = [ParameterOverride("K", 7, "pipeline.yaml:3: local.parameters.K")]
    values = resolve_parameters(definition, spec + parse_param_args(["K=9", "MinScore=-1", "Status=Rejected"]))
    assert values == {"InputData": "in", "OutputPrefix": "out", "InstanceCount": 3, "K": 9, "MinScore": -1.0,
                      "Status": "Rejected"}
    assert isinstance(values["MinScore"], float)


def test_parameter_override_errors_word_for_word():
    d = make_definition("in", "out")
    assert usage_error(d, "k=3") == (
        '--param k=3: unknown parameter "k" (did you mean "K"?); '
        "parameters: InputData, InstanceCount, K, MinScore, OutputPrefix, Status")
    assert usage_error(d, "Nope=3") == (
        '--param Nope=3: unknown parameter "Nope"; parameters: InputData, InstanceCount, K, MinScore, OutputPrefix, Status')
    assert usage_error(d, "K=ten") == '--param K=ten: K is an Integer parameter and "ten" is not an integer (for example K=5)'
    assert usage_error(d, "K=2.5") == '--param K=2.5: K is an Integer parameter and "2.5" is not an integer (for example K=5)'
    assert usage_error(d, "MinScore=nan") == (
        '--param MinScore=nan: MinScore is a Float parameter and "nan" is not a finite number (for example MinScore=0.5)')
    assert usage_error(d, "Status=Maybe") == (
        '--param Status=Maybe: "Maybe" is not an allowed value of Status; allowed: Approved, Rejected')
    assert usage_error(d, "K") == "--param K: expected Name=value, for example --param K=value"
    assert usage_error(d, "=3") == "--param =3: expected Name=value, for example --param Name=3"


def test_a_parameter_without_default_must_be_given():
    definition = make_definition("in", "out")
    del definition["Parameters"][0]["DefaultValue"]
    assert usage_error(definition) == "parameter InputData has no default value: pass --param InputData=<String>"


# ---- running: staging, gathering, failures ----------------------------------------------------------------------


def test_run_links_one_channel_copy_into_every_host_and_gathers_their_models(tmp_path, data_file):
    execution = run(make_definition(str(data_file), str(tmp_path / "out")), tmp_path)
    assert execution.status == "Succeeded"
    prep, train = execution.steps["Prep"], execution.steps["Train"]
    result = Path(prep.properties["ProcessingOutputConfig.Outputs['result'].S3Output.S3Uri"])
    assert result == tmp_path / "out" / execution.id / "result"
    assert (result / "result.txt").read_text() == f"ABC --k 5 {execution.id}"

    staged = execution.directory / "Train" / "channels" / "train"
    for host in ("algo-1", "algo-2", "algo-3"):
        root = execution.directory / "Train" / host
        link = root / "input" / "data" / "train"
        assert link.is_symlink() and Path(os.readlink(link)) == staged  # FullyReplicated: linked, not copied
        assert json.loads((root / "input/config/resourceconfig.json").read_text())["current_host"] == host
        assert (root / "checkpoints").resolve() == tmp_path / "out" / execution.id / "checkpoints"
    assert staged.is_symlink() and staged.resolve() == result  # even the one staged copy is a link to the output

    model = tmp_path / "out" / execution.id / "model" / train.job_name / "output" / "model"
    assert train.properties["ModelArtifacts.S3ModelArtifacts"] == str(model)
    assert train.job_name == f"demo-train-{execution.id[-6:]}"
    assert sorted(p.name for p in model.iterdir()) == ["shard-algo-1.txt", "shard-algo-2.txt", "shard-algo-3.txt"]
    assert (model / "shard-algo-2.txt").read_text() == f"ABC --k 5 {execution.id} k=5"
    # Every host sees every host's checkpoints: one shared location, as on SageMaker.
    assert sorted(p.name for p in (tmp_path / "out" / execution.id / "checkpoints").iterdir()) == [
        "ckpt-algo-1", "ckpt-algo-2", "ckpt-algo-3"]

    record = json.loads(execution.record_path.read_text())
    assert record["status"] == "Succeeded"
    assert [s["status"] for s in record["steps"]] == ["Succeeded", "Succeeded"]
    assert record["parameters"]["InstanceCount"] == 3
    assert (execution.directory / "Prep" / "algo-1" / "config" / "processingjobconfig.json").is_file()


@pytest.mark.parametrize("hosts", [1, 2, 3, 5])
def test_each_simulated_host_runs_on_its_own_share_of_the_cores(tmp_path, data_file, hosts):
    """As each SageMaker host has its own instance: disjoint even shares while there are enough cores, thread
    pools sized to them."""
    execution = run(make_definition(str(data_file), str(tmp_path / "out"), count=hosts), tmp_path)
    cores = sorted(os.sched_getaffinity(0))
    seen = [json.loads((execution.directory / f"Train/algo-{i}/output/cores.json").read_text())
            for i in range(1, hosts + 1)]
    assert all(threads == str(len(mine)) for mine, threads in seen)
    shares = [set(mine) for mine, _ in seen]
    if hosts <= len(cores):
        assert sorted(c for share in shares for c in share) == cores  # disjoint, every core used
        assert {len(share) for share in shares} <= {len(cores) // hosts, -(-len(cores) // hosts)}
    else:
        assert all(len(share) == 1 for share in shares) and set().union(*shares) == set(cores)


def test_a_directory_input_is_staged_with_its_relative_layout(tmp_path):
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("a")
    (source / "sub" / "b.txt").write_text("b")
    execution = run(make_definition(str(source), str(tmp_path / "out"), count=1), tmp_path)
    result = tmp_path / "out" / execution.id / "result" / "result.txt"
    assert result.read_text().startswith("AB --k 5")


def test_a_missing_input_says_which_parameter_to_fix(tmp_path):
    with pytest.raises(LocalRunError) as exc:
        run(make_definition(str(tmp_path / "nothing"), str(tmp_path / "out")), tmp_path)
    assert str(exc.value) == (
        f"step Prep, input data: {tmp_path / 'nothing'} does not exist; "
        "point --param InputData=PATH (or the spec's local parameters) at an existing file or directory"
    )


def test_two_hosts_writing_the_same_model_file_is_refused(tmp_path, data_file):
    definition = make_definition(str(data_file), str(tmp_path / "out"), environment={"MODEL_NAME": "model.txt"})
    with pytest.raises(LocalRunError) as exc:
        run(definition, tmp_path)
    assert str(exc.value) == (
        "step Train: hosts algo-1 and algo-2 both wrote model/model.txt; SageMaker would keep only one of them: "
        "make model file names host-unique (use current_host from resourceconfig.json)"
    )


def test_gather_model_files_lists_nested_files_by_relative_name(tmp_path):
    for host in ("algo-1", "algo-2"):
        (tmp_path / host / "sub").mkdir(parents=True)
        (tmp_path / host / "sub" / f"{host}.npy").write_text(host)
    files = gather_model_files({h: tmp_path / h for h in ("algo-1", "algo-2")}, "step S")
    assert list(files) == ["sub/algo-1.npy", "sub/algo-2.npy"]


def test_a_failing_host_stops_the_others_and_names_its_reason(tmp_path, data_file):
    definition = make_definition(str(data_file), str(tmp_path / "out"),
                                 environment={"FAIL_HOST": "algo-2", "SLOW_HOST": "algo-3"})
    with pytest.raises(LocalRunError) as exc:
        run(definition, tmp_path)
    (execution_dir,) = (tmp_path / "work" / "executions").iterdir()
    log = execution_dir / "Train" / "algo-2" / "job.log"
    assert str(exc.value) == f"step Train, host algo-2 failed: train: boom on algo-2 (log: {log})"
    assert "some noise" in log.read_text()
    record = json.loads((execution_dir / "execution.json").read_text())
    assert record["status"] == "Failed"
    train = record["steps"][1]
    assert train["status"] == "Failed"
    stopped = train["hosts"]["algo-3"]
    assert {key: stopped[key] for key in ("exit_code", "log", "reason")} == {
        "exit_code": None, "log": str(execution_dir / "Train/algo-3/job.log"), "reason": "stopped: another host failed"}
    assert stopped["seconds"] > 0 and stopped["peak_rss_bytes"] > 0  # measured by the runner, stopped or not
    # algo-1 finishes at once, but may still be exiting when algo-2's failure is seen (then it is stopped too)
    assert (train["hosts"]["algo-1"]["exit_code"], train["hosts"]["algo-1"]["reason"]) in [
        (0, ""), (None, "stopped: another host failed")]


def test_without_a_failure_file_the_last_stderr_line_is_the_reason(tmp_path, data_file):
    definition = make_definition(str(data_file), str(tmp_path / "out"), count=1)
    definition["Steps"][1]["Arguments"]["AppSpecification"]["ContainerEntrypoint"] = [
        "python3", "-c", "import sys; print('first', file=sys.stderr); print('ValueError: bad row 3', file=sys.stderr); sys.exit(3)"]
    with pytest.raises(LocalRunError, match=r"^step Prep, host algo-1 failed: ValueError: bad row 3 \(log: .*job.log\)$"):
        run(definition, tmp_path)


def test_a_processing_job_reason_is_its_exit_message_as_sagemaker_reads_it(tmp_path, data_file):
    """Processing jobs report /opt/ml/output/message (ExitMessage); /opt/ml/output/failure is training's file."""
    definition = make_definition(str(data_file), str(tmp_path / "out"), count=1)
    definition["Steps"][1]["Arguments"]["AppSpecification"]["ContainerEntrypoint"] = ["python3", "-c", (
        "import os, pathlib, sys; out = pathlib.Path(os.environ['ALLPAIRS_OPT_ML']) / 'output'; out.mkdir(); "
        "(out / 'failure').write_text('not read for a processing job'); "
        "(out / 'message').write_text('prep: row 7 column 2: value is NaN; fix the input'); "
        "print('a traceback line', file=sys.stderr); sys.exit(1)")]
    with pytest.raises(LocalRunError, match=r"^step Prep, host algo-1 failed: prep: row 7 column 2: value is NaN; "
                                            r"fix the input \(log: .*job.log\)$"):
        run(definition, tmp_path)


def test_a_processing_exit_message_that_is_not_utf8_fails_the_job_as_sagemaker_does(tmp_path, data_file):
    definition = make_definition(str(data_file), str(tmp_path / "out"), count=1)
    code = PROCESS_CODE + "(root / 'output').mkdir(); (root / 'output/message').write_bytes(b'done \\xff')\n"
    definition["Steps"][1]["Arguments"]["AppSpecification"]["ContainerEntrypoint"] = ["python3", "-c", code]
    with pytest.raises(LocalRunError) as info:
        run(definition, tmp_path)
    assert str(info.value) == ("step Prep, host algo-1: ClientError: /opt/ml/output/message is not UTF-8 (invalid "
                               "start byte at byte 5), which fails a processing job; write the message as UTF-8")
    assert not (tmp_path / "out").exists()  # a failed job's outputs are not published


def test_processing_outputs_are_published_only_after_the_container_exits(tmp_path, data_file):
    definition = make_definition(str(data_file), str(tmp_path / "out"), count=1)
    app = definition["Steps"][1]["Arguments"]["AppSpecification"]
    # The container looks for its own output where it will be published, while it still runs.
    app["ContainerArguments"] = [out_uri("result")]
    app["ContainerEntrypoint"] = ["python3", "-c", PROCESS_CODE + (
        "seen = pathlib.Path(sys.argv[1]).exists()\n"
        "(root / 'processing/output/result/seen.txt').write_text(str(seen))\n")]
    execution = run(definition, tmp_path)
    published = Path(execution.output_uri("Prep", "result"))
    assert (published / "seen.txt").read_text() == "False" and (published / "result.txt").is_file()


def test_gzip_compression_writes_one_model_tarball(tmp_path, data_file):
    execution = run(make_definition(str(data_file), str(tmp_path / "out"), count=2, compression="GZIP"), tmp_path)
    tarball = Path(execution.steps["Train"].properties["ModelArtifacts.S3ModelArtifacts"])
    assert tarball.name == "model.tar.gz"
    with tarfile.open(tarball) as tar:
        assert sorted(tar.getnames()) == ["shard-algo-1.txt", "shard-algo-2.txt"]


@pytest.fixture
def s3(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="bkt")
        yield client


def test_s3_inputs_outputs_models_and_checkpoints_go_through_boto3(tmp_path, s3):
    s3.put_object(Bucket="bkt", Key="in/part-1.txt", Body=b"ab")
    s3.put_object(Bucket="bkt", Key="in/sub/part-2.txt", Body=b"c")
    s3.put_object(Bucket="bkt", Key="in-other/ignored.txt", Body=b"zzz")  # a sibling prefix, not under in/
    execution = run(make_definition("s3://bkt/in", "s3://bkt/runs", count=2), tmp_path)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="bkt", Prefix="runs/")["Contents"])
    job = execution.steps["Train"].job_name
    assert keys == [
        f"runs/{execution.id}/checkpoints/ckpt-algo-1",
        f"runs/{execution.id}/checkpoints/ckpt-algo-2",
        f"runs/{execution.id}/model/{job}/output/model/shard-algo-1.txt",
        f"runs/{execution.id}/model/{job}/output/model/shard-algo-2.txt",
        f"runs/{execution.id}/result/result.txt",
    ]
    body = s3.get_object(Bucket="bkt", Key=f"runs/{execution.id}/result/result.txt")["Body"].read().decode()
    assert body == f"ABC --k 5 {execution.id}"
    assert execution.steps["Train"].properties["ModelArtifacts.S3ModelArtifacts"] == (
        f"s3://bkt/runs/{execution.id}/model/{job}/output/model")
    staged = execution.directory / "Train" / "channels" / "train"
    assert not staged.is_symlink() and (staged / "result.txt").is_file()  # downloaded once, for every host
    assert all(Path(os.readlink(execution.directory / "Train" / h / "input/data/train")) == staged
               for h in ("algo-1", "algo-2"))


def test_an_empty_s3_prefix_fails_like_sagemaker(tmp_path, s3):
    with pytest.raises(LocalRunError) as exc:
        run(make_definition("s3://bkt/none", "s3://bkt/runs", count=1), tmp_path)
    assert str(exc.value) == (
        "step Prep, input data: no objects under s3://bkt/none; "
        "point --param InputData=PATH (or the spec's local parameters) at an existing file or directory"
    )


# ---- CLI ------------------------------------------------------------------------------------------------------


def test_cli_prints_one_line_and_exits_2_for_a_bad_param(capsys):
    from pipeline.cli import main

    spec = Path(__file__).resolve().parents[1] / "pipeline.yaml"
    if not spec.exists():
        pytest.skip("pipeline.yaml not present")
    assert main(["run", "--spec", str(spec), "--param", "TopKK=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith('error: --param TopKK=3: unknown parameter "TopKK" (did you mean "TopK"?); parameters: ')
