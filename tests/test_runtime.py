"""Schedulers: the default listens on loopback only, TLS round trip, batch job scripts."""

import datetime as dt
import ipaddress
import os
import subprocess

import numpy as np
import psutil
import pytest
from click.testing import CliRunner

from gridflow.cli import main
from gridflow.errors import MissingDependencyError, ParameterError
from gridflow.runtime import SchedulerOptions, client, dashboard_link, job_script, worker_memory
from tests._cli import ROOT, cli_env, gridflow_command, small_pipeline
from tests._stores import assert_same_store

LOOPBACK = {"127.0.0.1", "::1"}


def _listening(proc: psutil.Process) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in proc.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def _numba_max():
    import numba

    return numba.config.NUMBA_NUM_THREADS


def _kernel_threads():
    """(FFT workers, numba threads) a chunk kernel gets in this thread."""
    import numba

    from gridflow.backend import ops

    b = ops(np.zeros(1))
    b.kernel("vote")  # sets numba's threads for this thread
    return b.fft_kwargs()["workers"], numba.get_num_threads()


def test_default_cluster_is_in_process_and_listens_on_loopback_only():
    me = psutil.Process()
    before = _listening(me)
    with client() as c:
        new = _listening(me) - before
        assert c.scheduler.address.startswith("inproc://")
        link = dashboard_link(c)
        assert len(c.scheduler_info()["workers"]) == 1
        assert c.submit(sum, [1, 2]).result() == 3
        # One thread a core: a task's FFTs and compiled loops run on one thread.
        assert c.submit(_kernel_threads, pure=False).result() == (1, 1)
    with client(threads=1) as c:
        cores = os.cpu_count()
        assert c.submit(_kernel_threads, pure=False).result() == (cores, min(cores, _numba_max()))
    assert new and {ip for ip, _ in new} <= LOOPBACK
    # The logged link is where the dashboard really listens.
    assert link.startswith("http://127.0.0.1:")
    assert int(link.split(":")[2].split("/")[0]) in {port for _, port in new}


def test_local_worker_processes_listen_on_loopback_only():
    me = psutil.Process()
    before = _listening(me)
    with client(workers=2, threads=1) as c:
        assert c.scheduler.address.startswith("tcp://127.0.0.1:")
        pids = c.run(os.getpid)
        assert len(pids) == 2
        for address in pids:
            assert address.startswith("tcp://127.0.0.1:")
        sockets = _listening(me) - before
        for pid in pids.values():
            sockets |= _listening(psutil.Process(pid))
        memory, threads = worker_memory()
        # Each process owns half the cores, split over its one thread.
        share = max(1, os.cpu_count() // 2)
        got = {c.submit(_kernel_threads, workers=[w], pure=False).result() for w in pids}
        assert got == {(share, min(share, _numba_max()))}
    assert sockets and {ip for ip, _ in sockets} <= LOOPBACK
    assert threads == 1 and memory > 0


def _certificates(folder):
    """A CA and one certificate for 127.0.0.1 signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def build(subject, issuer, key, signer, *, ca, san=None):
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("gridflow test CA", "gridflow test CA", ca_key, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = build("127.0.0.1", "gridflow test CA", key, ca_key, ca=False, san=san)
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_tls_round_trip_with_generated_certificates(tmp_path):
    from distributed import LocalCluster, Security

    certs = _certificates(tmp_path)
    security = Security(
        tls_ca_file=str(certs["ca"]),
        tls_scheduler_cert=str(certs["cert"]),
        tls_scheduler_key=str(certs["key"]),
        tls_worker_cert=str(certs["cert"]),
        tls_worker_key=str(certs["key"]),
        tls_client_cert=str(certs["cert"]),
        tls_client_key=str(certs["key"]),
        require_encryption=True,
    )
    config = small_pipeline(tmp_path / "p.yaml", bins=32, chunks=16, iterations=3)
    (tmp_path / "local").mkdir()
    (tmp_path / "tls").mkdir()
    r = CliRunner().invoke(main, ["run", str(config), "--workdir", str(tmp_path / "local")])
    assert r.exit_code == 0, r.output
    with LocalCluster(
        protocol="tls://",
        host="127.0.0.1",
        security=security,
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        dashboard_address=None,
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        with client(address, security=security) as c:  # the library path
            assert c.submit(sum, [2, 3]).result() == 5
        # The CLI path: certificates from Dask's configuration (environment).
        env = cli_env(
            DASK_DISTRIBUTED__COMM__TLS__CA_FILE=str(certs["ca"]),
            DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=str(certs["cert"]),
            DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=str(certs["key"]),
            DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION="True",
        )
        job = subprocess.run(
            gridflow_command("--scheduler", address, "run", config, "--workdir", tmp_path / "tls"),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert job.returncode == 0, job.stderr[-3000:]
        assert f"connected to {address}" in job.stderr
    assert_same_store(
        tmp_path / "local" / "out" / "grid.zarr", tmp_path / "tls" / "out" / "grid.zarr"
    )


def test_pbs_job_script_holds_the_requested_resources():
    # No PBS server package exists here: the script is generated by
    # dask-jobqueue exactly as it would be submitted, but nothing is submitted.
    script = job_script(
        "pbs",
        cores=8,
        memory_limit="16GB",
        walltime="02:30:00",
        queue="workq",
        account="proj42",
        workers=2,
    )
    assert "#PBS -q workq" in script
    assert "#PBS -A proj42" in script
    assert "#PBS -l select=1:ncpus=8:mem=15GB" in script  # 16 GB = 14.9 GiB, rounded up
    assert "#PBS -l walltime=02:30:00" in script
    assert "--nworkers 2" in script and "--nthreads 4" in script


def test_slurm_job_script_holds_the_requested_resources():
    script = job_script(
        SchedulerOptions(scheduler="slurm", cores=4, memory_limit="8GB"),
        walltime="00:20:00",
        queue="debug",
        account="proj42",
    )
    for line in (
        "#SBATCH -p debug",
        "#SBATCH -A proj42",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=8G",
        "#SBATCH -t 00:20:00",
    ):
        assert line in script
    assert "distributed.cli.dask_worker" in script


def test_jobqueue_yaml_settings_and_command_line_overrides(tmp_path):
    # deploy/jobqueue.yaml as a user's ~/.config/dask/jobqueue.yaml.
    env = cli_env(DASK_CONFIG=str(ROOT / "deploy"))
    args = ["run", "--check", ROOT / "examples" / "pipeline.yaml", "--workdir", tmp_path]
    job = subprocess.run(
        gridflow_command("--scheduler", "slurm", "--queue", "short", "--jobs", 3, *args),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert job.returncode == 0, job.stderr
    out = job.stdout
    assert "each of the 3 worker job(s)" in out
    assert "#SBATCH -p short" in out  # the command line wins
    assert "#SBATCH -A YOUR_ACCOUNT" in out  # the rest from jobqueue.yaml
    assert "#SBATCH --cpus-per-task=16" in out and "#SBATCH -t 02:00:00" in out
    assert "--nworkers 4" in out
    assert list(tmp_path.iterdir()) == []


def test_jobqueue_without_sizes_names_the_options(monkeypatch):
    import dask

    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}):
        with pytest.raises(ParameterError, match="--cores"):
            job_script("slurm", memory_limit="4GB")
        with pytest.raises(ParameterError, match="--memory-limit"):
            job_script("slurm", cores=2)


def test_missing_optional_dependency_gets_an_install_hint(tmp_path):
    pytest.importorskip("distributed")
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("dask-cuda is installed here")
    with (
        pytest.raises(MissingDependencyError, match=r"pip install 'gridflow\[gpu\]'"),
        client("gpu"),
    ):
        pass
    config = small_pipeline(tmp_path / "p.yaml")
    r = CliRunner().invoke(
        main, ["--scheduler", "gpu", "run", str(config), "--workdir", str(tmp_path)]
    )
    assert r.exit_code == 2
    assert r.output.startswith("error: scheduler gpu: needs dask-cuda")
    assert r.output.count("\n") == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheduler": "yarn"}, "scheduler: expected 'local'"),
        ({"workers": 0}, "workers: expected a positive integer"),
        ({"jobs": True}, "jobs: expected a positive integer"),
    ],
)
def test_bad_scheduler_options(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        SchedulerOptions(**kwargs)
