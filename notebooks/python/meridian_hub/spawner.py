"""Spawning one JupyterLab per user on this machine, with limits.

``LocalSpawner`` runs a user's server as the Unix account of the same name when there is one
and the hub may switch to it (the hub runs as root): then users cannot read each other's
processes or files. Without such an account (a laptop, where every Meridian user is the
one person at the keyboard), it runs the server as the hub's own account, in a working
directory of its own; the user's files still come from their Meridian storage, through
their own token. Memory (RLIMIT_DATA, the heap and private mappings) and CPU time
(RLIMIT_CPU) are limited either way; on a cluster DockerSpawner or KubeSpawner enforce
``mem_limit`` and ``cpu_limit`` themselves.
"""

import asyncio
import os
import pwd
import resource

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Integer, Unicode, default


def _limit(kind, value):
    if value and value > 0:
        resource.setrlimit(kind, (value, value))


class LocalSpawner(LocalProcessSpawner):
    """A user's server as a local process, isolated by Unix account where one exists."""

    work_dir_template = Unicode(
        "",
        config=True,
        help="Working directory of servers run under the hub's own account "
        "({username} is replaced); default: <hub directory>/users/{username}.",
    )
    cpu_time_limit = Integer(
        0, config=True, help="CPU seconds a user's server may use (0: no limit)."
    )

    @default("work_dir_template")
    def _default_work_dir(self):
        return os.path.join(os.environ.get("MERIDIAN_HUB_DIR", "/tmp"), "users", "{username}")

    def _system_account(self):
        """The Unix account of the user's name, if the hub may run processes as it."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(self.user.name)
        except KeyError:
            return None

    def make_preexec_fn(self, name):
        account = self._system_account()
        switch = super().make_preexec_fn(name) if account else None
        work = self.work_dir_template.format(username=self.user.name)
        mem = int(self.mem_limit or 0)
        cpu = int(self.cpu_time_limit or 0)

        def preexec():
            _limit(resource.RLIMIT_DATA, mem)
            _limit(resource.RLIMIT_CPU, cpu)
            if switch is not None:
                switch()
            else:
                os.makedirs(work, 0o700, exist_ok=True)
                os.chdir(work)

        return preexec

    def user_env(self, env):
        if self._system_account():
            return super().user_env(env)
        work = self.work_dir_template.format(username=self.user.name)
        env["USER"] = self.user.name
        env["HOME"] = work
        env["SHELL"] = "/bin/bash"
        return env

    async def start(self):
        if not self._system_account():
            self.log.info(
                "Server of %s runs under the hub's own account (no Unix account of that "
                "name): use DockerSpawner or KubeSpawner where users must not share one",
                self.user.name,
            )
        ip, port = await super().start()
        await self._listening(ip, port)
        return ip, port

    async def _listening(self, ip, port):
        """Returns once the server accepts connections (or its process ended, or the start
        timeout passed). The hub then finds it up at its first look: the hub's own wait
        backs off exponentially (0.2, 0.4, 0.8, 1.6, 3.2 s), which let a server that was
        listening after 2 s wait until 4 to 5 s to be used."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline and self.proc is not None and self.proc.poll() is None:
            try:
                _, writer = await asyncio.open_connection(ip, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    def get_args(self):
        args = super().get_args()
        if os.geteuid() == 0 and not self._system_account():
            # The hub runs as root (a container, a CI machine) and the user has no account
            # to switch to: Jupyter refuses to run as root unless told.
            args.append("--allow-root")
        return args

    def move_certs(self, paths):
        if self._system_account():
            return super().move_certs(paths)
        return paths
