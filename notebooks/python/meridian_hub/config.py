"""JupyterHub's configuration for Meridian's notebook hub.

``meridian serve`` starts JupyterHub with a configuration file that calls
:func:`configure`, and passes the settings of its ``[notebooks]`` section in
``MERIDIAN_HUB_*`` variables. Users sign in through Meridian (OAuth 2.0: its
``/oauth/authorize``, ``/oauth/token`` and ``/oauth/userinfo``); each gets a JupyterLab
whose files are their Meridian storage (``meridian_hub.contents``) and whose environment
holds ``MERIDIAN_URL`` and a token of their own, ``MERIDIAN_TOKEN``, so that clients
(pyvo, ``meridian``, ``dl``, ``sparcl``) need no login.
"""

import json
import os
import shutil
import sys
from pathlib import Path

#: Meridian's scopes the hub asks for on a user's behalf (never ``admin``).
SCOPES = ["catalogs:read", "storage:write", "jobs:run"]


def _env(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        raise RuntimeError(f"{name} is not set: start the hub with `meridian serve`")
    return value


def kernel_name(python):
    """A kernel's name and display name, from its environment's directory name."""
    env = Path(os.path.abspath(python)).parent.parent.name
    if "datalab" in env:
        return "datalab", "Python 3 (Data Lab: dl)"
    return "meridian", "Python 3 (Meridian: pyvo, lsdb)"


def write_kernels(pythons, into):
    """Kernel specifications for each Python in ``pythons``, under ``into/kernels``."""
    names = []
    kernels = Path(into) / "kernels"
    if kernels.exists():
        shutil.rmtree(kernels)
    for python in pythons:
        name, display = kernel_name(python)
        d = kernels / name
        d.mkdir(parents=True, exist_ok=True)
        spec = {
            "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": display,
            "language": "python",
        }
        (d / "kernel.json").write_text(json.dumps(spec, indent=1))
        names.append(name)
    return names


#: JupyterHub's pages, changed so that "My notebooks" always ends in the user's JupyterLab.
#: The portal's link is the hub's ``/hub/spawn``. Right after the user stopped their server,
#: the stop may still be pending: JupyterHub then shows "Your server is stopping" and,
#: once it has stopped, a "Server not running" page with a Launch button that waits for a
#: click. Here the stopping page asks for the spawn again every half second (JupyterHub
#: sends it back while the stop is pending, and starts the server after), and the "not
#: running" page reached on the way to a spawn (its address is /hub/spawn-pending/...)
#: starts the server itself, unless the last start failed.
TEMPLATES = {
    "stop_pending.html": """{% extends "templates/stop_pending.html" %}
{% block script %}
  {{ super() }}
  <script>
    setTimeout(function() {
      window.location = "{{ base_url }}spawn/{{ user.escaped_name }}";
    }, 500);
  </script>
{% endblock script %}
""",
    "not_running.html": """{% extends "templates/not_running.html" %}
{% block script %}
  {{ super() }}
  {% if not failed %}
  <script>
    if (window.location.pathname.indexOf("/spawn-pending/") >= 0) {
      setTimeout(function() { window.location = "{{ spawn_url }}"; }, 500);
    }
  </script>
  {% endif %}
{% endblock script %}
""",
}


def write_templates(into):
    """The pages of :data:`TEMPLATES`, under ``into/templates``; returns that directory."""
    d = Path(into) / "templates"
    d.mkdir(parents=True, exist_ok=True)
    for name, text in TEMPLATES.items():
        (d / name).write_text(text)
    return str(d)


def hand_token(spawner, auth_state):
    """The user's Meridian token (issued to the hub for them) into their server."""
    if not auth_state or "access_token" not in auth_state:
        spawner.log.warning("no Meridian token for %s: log in again", spawner.user.name)
        return
    spawner.environment["MERIDIAN_TOKEN"] = auth_state["access_token"]


def seed_examples(spawner):
    """Copies the example notebooks into ``notebooks/examples/`` of the user's storage,
    leaving any the user already has (or changed) alone."""
    src = os.environ.get("MERIDIAN_HUB_EXAMPLES")
    token = spawner.environment.get("MERIDIAN_TOKEN")
    if not src or not token or not Path(src).is_dir():
        return
    from meridian import Client

    client = Client(url=spawner.environment["MERIDIAN_URL"], token=token)
    try:
        client.vos.mkdir("notebooks/examples", parents=True)
        have = set(client.vos.ls("notebooks/examples"))
        for f in sorted(Path(src).glob("*.ipynb")):
            if f.name not in have:
                client.vos.put_bytes(f"notebooks/examples/{f.name}", f.read_bytes())
    except Exception as e:  # the server starts anyway
        spawner.log.warning("example notebooks not copied for %s: %s", spawner.user.name, e)


def configure(c):
    hub_dir = Path(_env("MERIDIAN_HUB_DIR"))
    public = _env("MERIDIAN_PUBLIC_URL").rstrip("/")
    internal = _env("MERIDIAN_INTERNAL_URL", public).rstrip("/")
    hub_url = _env("MERIDIAN_HUB_PUBLIC_URL").rstrip("/")

    # Where the hub listens, and where it keeps its state.
    c.JupyterHub.bind_url = hub_url
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = int(_env("MERIDIAN_HUB_API_PORT"))
    c.JupyterHub.db_url = f"sqlite:///{hub_dir / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(hub_dir / "cookie-secret")
    c.ConfigurableHTTPProxy.command = [_env("MERIDIAN_HUB_PROXY")]
    c.ConfigurableHTTPProxy.pid_file = str(hub_dir / "proxy.pid")
    # The proxy's API beside the hub's (its default, 127.0.0.1:8001, is every hub's on the
    # machine, and the hub's own API port when the hub is at port 8000).
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{_env('MERIDIAN_HUB_PROXY_API_PORT')}"
    c.JupyterHub.shutdown_on_logout = True
    c.JupyterHub.template_paths = [write_templates(hub_dir)]

    # Users sign in through Meridian.
    c.JupyterHub.authenticator_class = "generic-oauth"
    a = c.GenericOAuthenticator
    a.client_id = _env("MERIDIAN_HUB_CLIENT_ID")
    a.client_secret = _env("MERIDIAN_HUB_CLIENT_SECRET")
    a.oauth_callback_url = f"{hub_url}/hub/oauth_callback"
    a.authorize_url = f"{public}/oauth/authorize"
    a.token_url = f"{internal}/oauth/token"
    a.userdata_url = f"{internal}/oauth/userinfo"
    a.username_claim = "preferred_username"
    a.scope = SCOPES
    a.login_service = "Meridian"
    a.allow_all = True
    a.auto_login = True
    a.enable_auth_state = True
    # A token revoked in Meridian (its user logged out) ends the hub's session within a
    # minute, and always before a server starts.
    a.refresh_pre_spawn = True
    a.auth_refresh_age = 60
    a.logout_redirect_url = f"{public}/#/data"

    # One server per user.
    c.JupyterHub.spawner_class = _env("MERIDIAN_HUB_SPAWNER", "meridian_hub.spawner.LocalSpawner")
    s = c.Spawner
    s.start_timeout = int(_env("MERIDIAN_HUB_START_TIMEOUT", "120"))
    # A server that died is noticed within 10 s (JupyterHub's default: 30 s), and the
    # user's next "My notebooks" starts a new one.
    s.poll_interval = 10
    s.http_timeout = s.start_timeout
    s.default_url = "/lab"
    s.cmd = [os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")]
    mem = int(_env("MERIDIAN_HUB_MEM_LIMIT_MIB", "0"))
    if mem > 0:
        s.mem_limit = f"{mem}M"
    c.LocalSpawner.cpu_time_limit = int(_env("MERIDIAN_HUB_CPU_TIME_LIMIT", "0"))
    s.auth_state_hook = hand_token
    s.pre_spawn_hook = seed_examples
    jupyter_dir = hub_dir / "jupyter"
    pythons = [p for p in _env("MERIDIAN_HUB_KERNELS", "").split(":") if p]
    kernels = write_kernels(pythons, jupyter_dir)
    s.environment = {
        "MERIDIAN_URL": internal,
        "MERIDIAN_PUBLIC_URL": public,
        "JUPYTER_PATH": str(jupyter_dir),
    }
    args = [
        "--ServerApp.contents_manager_class=meridian_hub.contents.AsyncMeridianContentsManager",
    ]
    if kernels:
        # Only the environments with the clients: not the hub's own Python.
        args += [
            "--KernelSpecManager.ensure_native_kernel=False",
            f"--MappingKernelManager.default_kernel_name={kernels[0]}",
        ]
    s.args = args

    # Idle servers are stopped.
    idle = int(_env("MERIDIAN_HUB_IDLE_TIMEOUT", "0"))
    if idle > 0:
        c.JupyterHub.services = [
            {
                "name": "idle-culler",
                "command": [sys.executable, "-m", "meridian_hub.culler", f"--timeout={idle}"],
            }
        ]
        c.JupyterHub.load_roles = [
            {
                "name": "idle-culler",
                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
                "services": ["idle-culler"],
            }
        ]

    extra = os.environ.get("MERIDIAN_HUB_EXTRA_CONFIG")
    if extra:
        with open(extra) as f:
            exec(compile(f.read(), extra, "exec"), {"c": c})
