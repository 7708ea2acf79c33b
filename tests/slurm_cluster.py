"""A real, throw-away, single-node SLURM cluster (with slurmdbd accounting) for tests.

    ok, reason = ensure_packages()          # apt-get installs slurm-wlm, munge, slurmdbd, mariadb-server if missing
    if not ok:
        pytest.skip(reason)
    with SlurmCluster(tmp_path) as cluster:  # starts munged, mariadbd, slurmdbd, slurmctld, slurmd
        env = {**os.environ, **cluster.env}  # SLURM_CONF, for sbatch/squeue/sacct/submitit
        subprocess.run(["sbatch", "--wrap", "true"], env=env, check=True, timeout=30)

Needs root (the daemons run as root, munged as user ``munge``). All configuration, state, spool, log, pid and
database files live under the given directory, except munged's own directory (socket, key, pid file): the
``munge`` user cannot enter pytest's 0700 temporary directories and a unix socket path must stay short, so it
gets ``/tmp/stb-munge-*`` (linked from ``<dir>/munge`` while running), removed on exit. Being its own munged,
it does not touch (or need) a system munged on /run/munge.

Daemons run in the foreground as our children; they are stopped by the pid in their pid files (which must
name the child we started; never by name), then anything still carrying this cluster's marker in its
environment (slurmstepd, job processes) is killed, so nothing is left behind, also when start-up failed
half-way. If the Python process itself dies, the daemons get SIGTERM from the kernel (PR_SET_PDEATHSIG).
Facts behind the configuration: /work/shared/docs/slurm.md.
"""
from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged", "slurmdbd", "mariadbd")
CLIENTS = ("sbatch", "squeue", "sinfo", "sacct", "sacctmgr", "scancel", "mariadb-install-db", "mariadb")
PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")  # Debian bookworm names
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
DEFAULT_PORTS = {"slurmctld": 6817, "slurmd": 6818, "slurmdbd": 6819, "mariadbd": 3306}
WAIT_S = 60.0  # every wait for a daemon is bounded by this
CMD_TIMEOUT_S = 60.0  # and every client command by this
MARKER = "STBENCH_SLURM_CLUSTER"  # in every daemon's environment (and so its children's): <root dir>


# ------------------------------------------------------------------------------------------- packages
def which(name: str) -> str | None:
    """``shutil.which`` that also looks in the sbin directories (often missing from a non-login PATH)."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS]))


def missing_programs() -> list[str]:
    return [name for name in DAEMONS + CLIENTS if which(name) is None]


def ensure_packages() -> tuple[bool, str]:
    """Make sure the SLURM, munge, slurmdbd and MariaDB programs exist; install them with apt-get if not.

    Returns ``(True, "")`` when everything is there, else ``(False, reason)`` (tests skip with the reason).
    """
    missing = missing_programs()
    if not missing:
        return True, ""
    needs = f"the SLURM test cluster needs {', '.join(missing)}"
    if os.geteuid() != 0:
        return False, f"{needs}; not root, so cannot apt-get install them"
    apt = shutil.which("apt-get")
    if apt is None:
        return False, f"{needs}; no apt-get to install them with"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]

    def apt_get(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)

    try:
        proc = apt_get(install)
        if proc.returncode != 0:  # package lists missing or stale: refresh them once, then retry
            update = apt_get([apt, "update", "-qq"])
            if update.returncode != 0:
                return False, f"{needs}; apt-get update failed:\n{_tail(update.stderr + update.stdout)}"
            proc = apt_get(install)
    except subprocess.TimeoutExpired as exc:
        return False, f"{needs}; apt-get timed out: {exc}"
    if proc.returncode != 0:
        return False, f"{needs}; apt-get install {' '.join(PACKAGES)} failed:\n{_tail(proc.stderr + proc.stdout)}"
    missing = missing_programs()
    if missing:
        return False, f"still missing after apt-get install {' '.join(PACKAGES)}: {', '.join(missing)}"
    return True, ""


# -------------------------------------------------------------------------------------- small helpers
def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _file_tail(path: Path, lines: int = 15) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError as exc:
        return f"(cannot read: {exc.strerror})"


def port_in_use(port: int) -> bool:
    """True when something listens on (or holds) ``port``; binds the way the daemons do (SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _listening(port: int) -> bool:
    """True when a TCP socket listens on ``port`` (read from /proc, so the daemon sees no probe connection)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return False


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _real_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGTERM to the daemon if the Python process that started it dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# -------------------------------------------------------------------------------------------- cluster
class SlurmCluster:
    """One-node SLURM cluster with slurmdbd accounting, living in ``root`` (e.g. pytest's ``tmp_path``).

    ``env`` (``{"SLURM_CONF": ...}``) is what a client needs: merge it into a subprocess environment or into
    ``os.environ``. Also: ``conf_path``, ``cpus``, ``mem_mb`` (the node's RealMemory), ``partition`` (the
    default partition), ``startup_seconds`` (measured by ``start()``), ``pids()``, ``descendant_pids()``.
    ``ports`` overrides some of DEFAULT_PORTS (e.g. to run a second cluster beside a first).
    """

    cluster_name = "stbench"
    partition = "debug"

    def __init__(self, root: str | os.PathLike, ports: dict[str, int] | None = None, wait_s: float = WAIT_S):
        self.root = Path(root).resolve()
        self.ports = {**DEFAULT_PORTS, **(ports or {})}
        self.wait_s = wait_s
        self.cpus = os.cpu_count() or 1
        total_mb = _real_memory_mb()
        self.mem_mb = max(256, min(int(total_mb * 0.9), total_mb - 512))  # a bit below the real memory
        self.conf_path = self.root / "etc" / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf_path)}
        self.startup_seconds: float | None = None
        self._procs: dict[str, subprocess.Popen] = {}  # daemon name -> our child process, in start order
        self._munge_dir: Path | None = None
        log, run = self.root / "log", self.root / "run"
        self._logs = {name: log / f"{name}.log" for name in ("slurmctld", "slurmd", "slurmdbd", "mariadbd")}
        self._pidfiles = {name: run / f"{name}.pid" for name in ("slurmctld", "slurmd", "slurmdbd", "mariadbd")}
        self._mysql_socket = run / "mysqld.sock"

    # ---------------------------------------------------------------------------------------- public API
    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        """Start munged, mariadbd, slurmdbd, slurmctld and slurmd; return once ``sinfo`` reports idle."""
        t0 = time.monotonic()
        missing = missing_programs()
        if missing:
            raise RuntimeError(f"cannot start the SLURM test cluster, missing {', '.join(missing)} "
                               "(ensure_packages() installs them)")
        if os.geteuid() != 0:
            raise RuntimeError("the SLURM test cluster must be started as root")
        busy = [f"{name} {port}" for name, port in self.ports.items() if port_in_use(port)]
        if busy:
            raise RuntimeError(f"ports the SLURM test cluster needs are in use ({', '.join(busy)}): is another "
                               f"cluster, slurm or MariaDB running?\n{self._listeners()}")
        try:
            self._write_config()
            self._start_munged()
            self._start_mariadbd()
            self._start_daemon("slurmdbd", "-D")  # reads slurmdbd.conf next to $SLURM_CONF
            self._run(["sacctmgr", "-i", "add", "cluster", self.cluster_name])
            self._start_daemon("slurmctld", "-D", "-f", str(self.conf_path))
            self._start_daemon("slurmd", "-D", "-N", "localhost", "-f", str(self.conf_path))
            self._wait("slurmd", self._idle, "sinfo -h -o %t to print idle")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def pids(self) -> dict[str, int]:
        """The daemons' pids, by name (they stay recorded after ``stop()``)."""
        return {name: proc.pid for name, proc in self._procs.items()}

    def descendant_pids(self) -> list[int]:
        """Live processes this cluster started: its daemons and their children (slurmstepd, job processes),
        found by the marker each daemon has, and passes on, in its environment."""
        needle = f"{MARKER}={self.root}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if needle in environ and pid_alive(int(entry.name)):
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        """Cancel jobs, stop the daemons in reverse start order, kill whatever they left; idempotent.

        Raises RuntimeError if a daemon would not stop or leftover processes had to be killed.
        """
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self._cancel_all_jobs()
        stubborn = [name for name in reversed(list(self._procs)) if not self._stop_daemon(name)]
        leftovers = self._kill_descendants()
        if self._munge_dir is not None:
            shutil.rmtree(self._munge_dir, ignore_errors=True)
            (self.root / "munge").unlink(missing_ok=True)
            self._munge_dir = None
        if stubborn or leftovers:
            raise RuntimeError(f"SLURM test cluster in {self.root}: daemons that would not stop: {stubborn}; "
                               f"leftover processes killed: {leftovers}")

    def log_tails(self, lines: int = 15) -> str:
        """The end of every daemon's log and stdout/stderr, for error messages."""
        parts = []
        for name in self._procs:
            for path in (self._logs.get(name), self._out_path(name)):
                if path is not None and path.exists():
                    parts.append(f"--- {path}\n{_file_tail(path, lines)}")
        return "\n".join(parts)

    # ------------------------------------------------------------------------------------- configuration
    def _write_config(self) -> None:
        r = self.root
        for sub in ("etc", "log", "run", "state", "spool", "mysql"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        self._munge_dir = Path(tempfile.mkdtemp(prefix="stb-munge-", dir="/tmp"))
        munge = pwd.getpwnam("munge")
        os.chown(self._munge_dir, munge.pw_uid, munge.pw_gid)
        self._munge_dir.chmod(0o755)  # clients (root) reach the socket; munged checks nobody else can write
        (r / "munge").unlink(missing_ok=True)
        (r / "munge").symlink_to(self._munge_dir)
        self._munge_socket = self._munge_dir / "munge.socket"
        self._pidfiles["munged"] = self._munge_dir / "munged.pid"
        # Every RPC authenticates with our munged (AuthInfo); except that clients and slurmctld take the munge
        # socket for messages to slurmdbd from AccountingStoragePass, and slurmdbd from its own AuthInfo.
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self._munge_socket}"
        p, pid, log = self.ports, self._pidfiles, self._logs
        self.conf_path.write_text(f"""\
# written by tests/slurm_cluster.py; see /work/shared/docs/slurm.md
ClusterName={self.cluster_name}
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={p['slurmctld']}
SlurmdPort={p['slurmd']}
{auth}
CredType=cred/munge
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={pid['slurmctld']}
SlurmdPidFile={pid['slurmd']}
SlurmctldLogFile={log['slurmctld']}
SlurmdLogFile={log['slurmd']}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MpiDefault=none
SwitchType=switch/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={p['slurmdbd']}
AccountingStoragePass={self._munge_socket}
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} State=UNKNOWN
PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        # slurmdbd has no -f: it reads slurmdbd.conf next to $SLURM_CONF, which must be mode 600.
        dbd_conf = self.conf_path.with_name("slurmdbd.conf")
        dbd_conf.write_text(f"""\
{auth}
DbdHost=localhost
DbdPort={p['slurmdbd']}
SlurmUser=root
PidFile={pid['slurmdbd']}
LogFile={log['slurmdbd']}
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={p['mariadbd']}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
""")
        dbd_conf.chmod(0o600)

    # -------------------------------------------------------------------------------------------- daemons
    def _out_path(self, name: str) -> Path:
        """Where a daemon's own stdout/stderr go (munged logs only there; the others' early errors do)."""
        return self.root / "log" / f"{name}.out"

    def _spawn(self, name: str, cmd: list[str], **popen_kwargs) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(self.env)
        env[MARKER] = str(self.root)
        popen_kwargs.setdefault("cwd", self.root)  # not the caller's directory (core files, stray output)
        with open(self._out_path(name), "ab") as out:
            self._procs[name] = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, preexec_fn=_die_with_parent, **popen_kwargs)

    def _wait(self, name: str, ready, what: str) -> None:
        """Wait (bounded) until ``ready()``; fail at once, with the logs, if the daemon exits meanwhile."""
        proc = self._procs[name]
        deadline = time.monotonic() + self.wait_s
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited (status {proc.returncode}) before {what}\n{self.log_tails()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {self.wait_s:.0f} s, waiting for {what}\n"
                                   f"{self.log_tails()}")
            time.sleep(0.1)

    def _wait_started(self, name: str, port: int | None = None) -> None:
        if port is not None:
            self._wait(name, lambda: _listening(port), f"it to listen on port {port}")
        self._wait(name, lambda: self._read_pidfile(name) is not None, f"it to write {self._pidfiles[name]}")

    def _start_daemon(self, name: str, *args: str) -> None:
        self._spawn(name, [which(name), *args])
        self._wait_started(name, self.ports[name])

    def _start_munged(self) -> None:
        munge = pwd.getpwnam("munge")
        key = self._munge_dir / "munge.key"  # a fresh key: this cluster trusts no other munged
        key.write_bytes(os.urandom(1024))
        os.chown(key, munge.pw_uid, munge.pw_gid)
        key.chmod(0o400)
        self._spawn("munged", [which("munged"), "--foreground", f"--socket={self._munge_socket}",
                               f"--key-file={key}", f"--pid-file={self._pidfiles['munged']}",
                               f"--seed-file={self._munge_dir / 'munged.seed'}"],
                    user=munge.pw_uid, group=munge.pw_gid, extra_groups=[], cwd=self._munge_dir)
        self._wait("munged", self._munge_socket.exists, f"it to create {self._munge_socket}")
        self._wait_started("munged")

    def _start_mariadbd(self) -> None:
        datadir = self.root / "mysql"
        self._run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={datadir}",
                   "--auth-root-authentication-method=socket", "--skip-test-db"])
        self._spawn("mariadbd", [
            which("mariadbd"), "--no-defaults", "--user=root", f"--datadir={datadir}",
            f"--socket={self._mysql_socket}", f"--pid-file={self._pidfiles['mariadbd']}",
            f"--log-error={self._logs['mariadbd']}", "--bind-address=127.0.0.1", f"--port={self.ports['mariadbd']}",
            "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=64M",
            "--innodb-flush-log-at-trx-commit=0"])
        self._wait("mariadbd", self._mysql_socket.exists, f"it to create {self._mysql_socket}")
        self._wait_started("mariadbd", self.ports["mariadbd"])
        grants = "".join(f"CREATE USER IF NOT EXISTS 'slurm'@'{host}' IDENTIFIED BY 'slurm'; "
                         f"GRANT ALL ON slurm_acct_db.* TO 'slurm'@'{host}'; " for host in ("127.0.0.1", "localhost"))
        self._run(["mariadb", "--no-defaults", f"--socket={self._mysql_socket}", "-u", "root",
                   "-e", f"CREATE DATABASE IF NOT EXISTS slurm_acct_db; {grants}FLUSH PRIVILEGES;"])

    def _idle(self) -> bool:
        proc = self._run(["sinfo", "-h", "-o", "%t"], check=False, timeout=10)
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    # ------------------------------------------------------------------------------------------- stopping
    def _read_pidfile(self, name: str) -> int | None:
        try:
            return int(self._pidfiles[name].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _stop_daemon(self, name: str) -> bool:
        """SIGTERM the pid in the daemon's pid file, SIGKILL after a bounded wait; True once it is gone."""
        proc = self._procs[name]
        if proc.poll() is not None:
            return True
        pid = self._read_pidfile(name)
        if pid != proc.pid:
            # Foreground daemons are our children, so the pid file names the child; when it is missing (start-up
            # failed early) or names anything else, signal the child we started, and nothing else.
            pid = proc.pid
        for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=wait_s)  # also reaps it
                break
            except subprocess.TimeoutExpired:
                continue
        return proc.poll() is not None

    def _cancel_all_jobs(self) -> None:
        """So that no job outlives the cluster (slurmstepd keeps running when slurmd stops)."""
        try:
            self._run(["scancel", f"--partition={self.partition}"], check=False, timeout=15)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                queue = self._run(["squeue", "-h", "-o", "%i"], check=False, timeout=10)
                if queue.returncode != 0 or not queue.stdout.strip():
                    return
                time.sleep(0.2)
        except subprocess.TimeoutExpired:
            pass  # the marker sweep in stop() still ends the jobs' processes

    def _kill_descendants(self) -> list[int]:
        leftovers = self.descendant_pids()
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(pid_alive(pid) for pid in leftovers) and time.monotonic() < deadline:
            time.sleep(0.1)
        return leftovers

    # -------------------------------------------------------------------------------------------- helpers
    def _run(self, cmd: list[str], check: bool = True, timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run a client command against this cluster (bounded by ``timeout``)."""
        cmd = [which(cmd[0]) or cmd[0], *cmd[1:]]
        proc = subprocess.run(cmd, env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (status {proc.returncode}):\n"
                               f"{_tail(proc.stdout + proc.stderr)}\n{self.log_tails()}")
        return proc

    @staticmethod
    def _listeners() -> str:
        ss = shutil.which("ss")
        if ss is None:
            return ""
        try:
            return subprocess.run([ss, "-ltnp"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""
