"""Stores on object storage: an S3 server on loopback (moto), used through s3fs."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from stage1_helpers import REPO, make_teacher, stage1_args

from softtargets.cli import cli

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

SECRET = "s3cr3t-never-printed"


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 with bucket `teams`; credentials only in the environment."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "teamkey", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().makedirs("teams", exist_ok=True)  # moto keeps state per process
    yield env
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_write_in_one_process_inspect_verify_train_in_another(s3, tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    url = "s3://teams/fashion/teacher-logits.zarr"
    writer = subprocess.run([sys.executable, "-m", "softtargets",
                             *stage1_args(tiny_data, teacher, url, "--shard-rows", 32)],
                            cwd=REPO, env={**os.environ, **s3}, capture_output=True, text=True,
                            timeout=120)
    assert writer.returncode == 0, writer.stderr[-2000:]
    assert f"-> {url}" in writer.stdout
    keys = sorted(s3fs.S3FileSystem().find("teams/fashion"))
    assert "teams/fashion/teacher-logits.zarr/logits/c/2/0" in keys
    assert not any(k.endswith(".lock") for k in keys)  # the lease was released

    info = run("inspect", url)
    assert info.exit_code == 0, info.output
    assert "(softtargets.logits v1, dense, complete)" in info.output
    assert "objects:    logits 3/3, sample_id 3/3 present" in info.output
    ver = run("verify", url, "--dataset", "mnist", "--data-dir", tiny_data.data_dir)
    assert ver.exit_code == 0 and ": OK" in ver.output
    stu = run("student", "--dataset", "mnist", "--data-dir", tiny_data.data_dir, "--store", url,
              "--hidden", "16", "--epochs", 1, "--batch-size", 32, "-T", 4,
              "--out", tmp_path / "student", "--quiet")
    assert stu.exit_code == 0, stu.output
    assert "distilled: mlp 784-16-10 (T=4, alpha=0.9), 1 epochs on 96 rows" in stu.output
    assert all(SECRET not in r.output for r in (info, ver, stu))
    assert SECRET not in writer.stdout + writer.stderr


def test_missing_credentials_give_one_clear_line(s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3fs.S3FileSystem.clear_instance_cache()
    for cmd in ("inspect", "verify"):
        res = run(cmd, "s3://teams/x.zarr")
        assert res.exit_code == 1
        assert res.output.strip() == (
            "Error: RemoteStoreError: cannot open 's3://teams/x.zarr': no credentials found "
            "(NoCredentialsError); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE / ~/.aws/credentials; AWS_ENDPOINT_URL for an S3-compatible server)")
        assert "Traceback" not in res.output


def test_unreadable_url_gives_one_clear_line(s3):
    res = run("verify", "s3://no-such-bucket/x.zarr")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.startswith("Error: StoreError: 's3://no-such-bucket/x.zarr' is not a Zarr "
                                 "v3 group")
    res = run("inspect", "s3://user:pw@teams/none.zarr")
    assert res.exit_code == 1 and "pw" not in res.output


def test_stage1_without_credentials_fails_cleanly(s3, monkeypatch, tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3fs.S3FileSystem.clear_instance_cache()
    res = CliRunner().invoke(cli, stage1_args(tiny_data, teacher, "s3://teams/new.zarr"))
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.startswith("Error: RemoteStoreError: cannot ")
    assert "no credentials found (NoCredentialsError)" in res.output


def test_stage1_into_a_missing_bucket_fails_cleanly(s3, tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    res = CliRunner().invoke(cli, stage1_args(tiny_data, teacher, "s3://no-such-bucket/x.zarr"))
    assert res.exit_code == 1
    assert res.output.strip() == (
        "Error: RemoteStoreError: cannot lock 's3://no-such-bucket/x.zarr': no such bucket or "
        "path (FileNotFoundError: The specified bucket does not exist); create the bucket or fix "
        "the URL")


def test_lease_on_object_storage_refuses_a_second_writer(s3):
    from softtargets.errors import StoreLockedError
    from softtargets.write.lock import StoreLock
    url = "s3://teams/locked.zarr"
    with StoreLock(url):
        assert s3fs.S3FileSystem().exists("teams/locked.zarr.lock")
        with pytest.raises(StoreLockedError, match=r"store 's3://teams/locked.zarr' is being "
                           r"written by pid \d+ on host"):
            StoreLock(url).acquire()
    s3fs.S3FileSystem().invalidate_cache()
    assert not s3fs.S3FileSystem().exists("teams/locked.zarr.lock")


def test_file_urls_work_like_paths(tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    url = f"file://{tmp_path}/f.zarr"
    res = CliRunner().invoke(cli, stage1_args(tiny_data, teacher, url, "--shard-rows", 16))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "f.zarr" / "logits" / "c" / "5" / "0").is_file()
    assert ": OK" in run("verify", url).output
    assert "objects:    logits 6/6, sample_id 6/6 present" in run("inspect", url).output


def test_overwrite_on_object_storage_deletes_only_a_softtargets_store(s3, tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    fs = s3fs.S3FileSystem()
    small = ("--limit", 16)  # two units: few requests
    fs.pipe_file("teams/f.txt", b"my notes")
    fs.pipe_file("teams/g.zarr/zarr.json", b'{"zarr_format": 3, "node_type": "group", '
                 b'"attributes": {"owner": "me"}}')
    for url, why in (("s3://teams/f.txt", "it is an object (a file), not a softtargets store"),
                     ("s3://teams/g.zarr", "it is a Zarr group but not a softtargets store "
                      "(attributes['softtargets']['format'] is not 'softtargets.logits')")):
        res = run(*stage1_args(tiny_data, teacher, url, "--overwrite", *small))
        assert res.exit_code == 1
        assert res.output == (f"Error: ForeignDataError: refusing to overwrite '{url}': {why}; "
                              "move it or choose another --store\n")
    url = "s3://teams/s.zarr"
    assert run(*stage1_args(tiny_data, teacher, url, *small)).exit_code == 0
    fs.pipe_file("teams/s.zarr/notes.txt", b"mine")
    fs.invalidate_cache()
    before = sorted(fs.find("teams"))
    res = run(*stage1_args(tiny_data, teacher, url, "--overwrite", *small))
    assert res.output == ("Error: ForeignDataError: refusing to overwrite 's3://teams/s.zarr': "
                          "it holds 'notes.txt', which softtargets did not create; move it or "
                          "choose another --store\n")
    fs.invalidate_cache()
    assert sorted(fs.find("teams")) == before and fs.cat_file("teams/f.txt") == b"my notes"
    fs.rm_file("teams/s.zarr/notes.txt")
    assert run(*stage1_args(tiny_data, teacher, url, "--overwrite", *small)).exit_code == 0
    assert ": OK" in run("verify", url).output


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_unreachable_endpoint_gives_one_line_and_nothing_else(command):
    import socket
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_MAX_ATTEMPTS": "1"}
    proc = subprocess.run([sys.executable, "-c", "from softtargets.cli import main; main()",
                           command, "s3://teams/x.zarr"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (
        "Error: RemoteStoreError: cannot open 's3://teams/x.zarr': cannot connect to the storage "
        "endpoint (EndpointConnectionError: Could not connect to the endpoint URL: "
        f"\"http://127.0.0.1:{port}/teams/x.zarr/zarr.json\"); check AWS_ENDPOINT_URL / the "
        "network\n")


def test_explain_tells_a_refused_connection_from_a_denial_whatever_the_port():
    from softtargets.format.remote import explain

    class EndpointConnectionError(Exception):
        pass

    class ClientError(Exception):
        pass

    url = 's3://teams/x.zarr'
    refused = EndpointConnectionError('Could not connect to the endpoint URL: '
                                      '"http://127.0.0.1:40321/teams/x.zarr/zarr.json"')
    assert explain(url, refused).startswith(f"cannot open {url!r}: cannot connect to the "
                                            "storage endpoint (EndpointConnectionError: ")
    for text in ("An error occurred (403) when calling the HeadObject operation: Forbidden",
                 "An error occurred (AccessDenied) when calling the GetObject operation"):
        assert explain(url, ClientError(text)).startswith(f"cannot open {url!r}: access denied")
    assert explain(url, ClientError("object 14030 of 40321 missing")) == (
        f"cannot open {url!r}: ClientError: object 14030 of 40321 missing")
