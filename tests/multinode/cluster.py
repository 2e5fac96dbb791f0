"""Two "nodes" on one machine: network namespaces joined by a veth pair, each with its own sshd.

Each node is a network namespace (its own interfaces, addresses and port space), a UTS namespace (its own
hostname, so MPI and DeepSpeed see two hosts) and a mount namespace in which `/etc/hosts` names the nodes and
`/etc/ssh` holds a client config that trusts our throw-away host keys. Everything else (filesystem, python,
the project) is shared, as on a cluster with a shared home. Traffic stays on the addresses created here:
the veth pair exists only inside the two namespaces, so nothing can leave the machine.

Commands run on a node through `nsenter` into its sshd's namespaces, which is what an ssh session there
sees; launchers then reach the other node through real ssh. `close()` ends every process left in the
namespaces (ours by construction), stops the sshds and removes the namespaces and files.
"""

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

SUBNET = "10.77.0"
INTERFACE = "mnet0"  # deliberately not eth0: the launchers' eth0 defaults must be overridden to work
SSH_PORT = 22  # every namespace has its own port space, so the standard port is free in each


class NamespaceError(RuntimeError):
    pass


def _sh(command, check=True, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise NamespaceError(f"`{' '.join(command)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


class NamespaceCluster:
    """``num_nodes`` nodes named node1..nodeN at 10.77.0.1..N on interface ``mnet0``."""

    def __init__(self, num_nodes=2):
        self.tag = "mds" + uuid.uuid4().hex[:6]
        self.names = [f"node{i + 1}" for i in range(num_nodes)]
        self.addresses = {name: f"{SUBNET}.{i + 1}" for i, name in enumerate(self.names)}
        self.namespaces = {name: f"{self.tag}{name}" for name in self.names}
        self.workdir = tempfile.mkdtemp(prefix=f"{self.tag}_")
        self.sshd = {}
        self._etc_dirs = []

    # -- set-up -------------------------------------------------------------------------------------------
    def start(self):
        try:
            self._create_namespaces()
            self._write_ssh_files()
            for name in self.names:
                self._start_sshd(name)
            for name in self.names:
                self._wait_for_ssh(name)
        except BaseException:
            self.close()
            raise
        return self

    def _create_namespaces(self):
        if os.geteuid() != 0:
            raise NamespaceError("multi-node tests create network namespaces and need root (CI runs as root)")
        for name in self.names:
            _sh(["ip", "netns", "add", self.namespaces[name]])
        if len(self.names) != 2:
            raise NotImplementedError("a veth pair joins exactly two nodes; use a bridge for more")
        first, second = (self.namespaces[name] for name in self.names)
        # Both ends are created directly inside the namespaces: no interface ever appears on the host.
        _sh(["ip", "link", "add", INTERFACE, "netns", first, "type", "veth", "peer", "name", INTERFACE,
             "netns", second])
        for name in self.names:
            netns = ["ip", "-n", self.namespaces[name]]
            _sh(netns + ["addr", "add", f"{self.addresses[name]}/24", "dev", INTERFACE])
            _sh(netns + ["link", "set", INTERFACE, "up"])
            _sh(netns + ["link", "set", "lo", "up"])

    def _write_ssh_files(self):
        ssh_dir = os.path.join(self.workdir, "ssh")
        os.makedirs(ssh_dir, mode=0o700)
        self.client_key = os.path.join(ssh_dir, "id_ed25519")
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.client_key])
        shutil.copy(self.client_key + ".pub", os.path.join(ssh_dir, "authorized_keys"))
        self.host_key = os.path.join(ssh_dir, "host_ed25519")
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.host_key])
        # `ip netns exec NAME` bind-mounts every entry of /etc/netns/NAME over /etc; sshd and everything it
        # starts inherit that mount namespace, so these files are what the nodes see and nothing else does.
        hosts = "127.0.0.1 localhost\n" + "".join(f"{self.addresses[n]} {n}\n" for n in self.names)
        client_config = (f"Host {' '.join(self.names)} {' '.join(self.addresses.values())}\n"
                         f"  IdentityFile {self.client_key}\n  IdentitiesOnly yes\n"
                         "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
                         "  BatchMode yes\n")
        for name in self.names:
            etc = os.path.join("/etc/netns", self.namespaces[name])
            os.makedirs(os.path.join(etc, "ssh"))
            self._etc_dirs.append(etc)
            with open(os.path.join(etc, "hosts"), "w") as f:
                f.write(hosts)
            with open(os.path.join(etc, "hostname"), "w") as f:
                f.write(name + "\n")
            with open(os.path.join(etc, "ssh", "ssh_config"), "w") as f:
                f.write(client_config)
            config = os.path.join(self.workdir, f"sshd_{name}.conf")
            with open(config, "w") as f:
                f.write(f"ListenAddress {self.addresses[name]}:{SSH_PORT}\nHostKey {self.host_key}\n"
                        f"PidFile {self.workdir}/sshd_{name}.pid\n"
                        f"AuthorizedKeysFile {ssh_dir}/authorized_keys\n"
                        # the key files live under /tmp (world-writable): relax the ownership walk
                        "StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                        "KbdInteractiveAuthentication no\nUsePAM no\n"
                        # SetEnv-free sessions keep the server's default PATH; the launchers call
                        # python by absolute path (sys.executable)
                        "AcceptEnv none\nX11Forwarding no\nPrintMotd no\nMaxStartups 64\nMaxSessions 64\n"
                        "LogLevel ERROR\n")

    def _start_sshd(self, name):
        config = os.path.join(self.workdir, f"sshd_{name}.conf")
        log = open(os.path.join(self.workdir, f"sshd_{name}.log"), "w")
        os.makedirs("/run/sshd", exist_ok=True)  # privilege-separation directory sshd insists on
        # unshare --uts gives the node its own hostname; -D keeps sshd in the foreground so its pid is ours.
        command = ["ip", "netns", "exec", self.namespaces[name], "unshare", "--uts", "sh", "-c",
                   f"hostname {name} && exec /usr/sbin/sshd -D -e -f {shlex.quote(config)}"]
        self.sshd[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)

    def _wait_for_ssh(self, name, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            if self.sshd[name].poll() is not None:
                raise NamespaceError(f"sshd on {name} exited: {self.log(name)}")
            probe = self.run(self.names[0], ["ssh", name, "hostname"], timeout=10, check=False)
            if probe.returncode == 0 and probe.stdout.strip() == name:
                return
            if time.monotonic() > deadline:
                raise NamespaceError(f"ssh to {name} did not work within {timeout}s: {probe.stderr.strip()}\n"
                                     f"sshd log: {self.log(name)}")
            time.sleep(0.2)

    def log(self, name):
        with open(os.path.join(self.workdir, f"sshd_{name}.log")) as f:
            return f.read()[-2000:]

    # -- use ----------------------------------------------------------------------------------------------
    def node_command(self, name, command, cwd=None):
        """``command`` wrapped to run inside ``name``'s namespaces, as an ssh session there would (in ``cwd``:
        entering a mount namespace starts at /)."""
        return ["nsenter", "-t", str(self.sshd[name].pid), "-n", "-u", "-m", f"--wd={cwd or os.getcwd()}",
                "--"] + list(command)

    def popen(self, name, command, cwd=None, **kwargs):
        return subprocess.Popen(self.node_command(name, command, cwd), **kwargs)

    def run(self, name, command, timeout, check=True, cwd=None, **kwargs):
        result = subprocess.run(self.node_command(name, command, cwd), capture_output=True, text=True,
                                timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise NamespaceError(f"{command} on {name} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def kill_leftovers(self):
        """Ends every process in the nodes except the sshds (ranks a failed launch left behind)."""
        keep = {proc.pid for proc in self.sshd.values()}
        for namespace in self.namespaces.values():
            pids = _sh(["ip", "netns", "pids", namespace], check=False).stdout.split()
            for pid in pids:
                if int(pid) not in keep:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    # -- tear-down ----------------------------------------------------------------------------------------
    def close(self):
        self.kill_leftovers()
        for proc in self.sshd.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.kill_leftovers()  # sessions whose sshd is gone
        for namespace in self.namespaces.values():
            _sh(["ip", "netns", "del", namespace], check=False)
        for etc in self._etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
        shutil.rmtree(self.workdir, ignore_errors=True)
