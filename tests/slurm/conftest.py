"""A real one-node SLURM cluster on localhost (slurmctld, slurmd, munge), started once per session.

Installs Debian's packages when they are missing and this process may (root with apt-get); skips with
the reason otherwise, unless TITANS_REQUIRE_SLURM=1 (CI), where a missing cluster fails the run.
"""

import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]


def _unavailable(reason):
    if os.environ.get("TITANS_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM is required here (TITANS_REQUIRE_SLURM=1) but {reason}")
    pytest.skip(f"no SLURM cluster: {reason}")


def _install():
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _unavailable(f"slurmctld/slurmd/munge are not installed and cannot be (needs root and apt-get: "
                     f"apt-get install {' '.join(PACKAGES)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=900)
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        _unavailable(f"apt-get install {' '.join(PACKAGES)} failed:\n{proc.stderr[-1500:]}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """The environment (SLURM_CONF) under which sbatch / squeue / scontrol talk to the cluster."""
    _install()
    root = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_NCPUS": "2", "SLURM_CLEAR_STATE": "1"}
    proc = subprocess.run(["bash", os.path.join(HERE, "start_cluster.sh"), str(root)], capture_output=True, text=True,
                          env=env, timeout=180)
    if proc.returncode != 0:
        _unavailable(f"the cluster did not start:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    try:
        yield {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    finally:
        subprocess.run(["bash", os.path.join(HERE, "stop_cluster.sh"), str(root)], capture_output=True, timeout=180)
