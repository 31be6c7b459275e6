"""Set-up run when a notebook kernel starts: NOIRLab's clients find Meridian on their own.

Loaded as an IPython extension (``load_ipython_extension``) by the kernel's environment:
``python -m meridian.kernel install`` writes ``<sys.prefix>/etc/ipython/
ipython_kernel_config.py``, which IPython reads for every kernel of that environment
(scripts/notebooks-setup.sh runs it in both kernels' environments; a container image
runs it once). Nothing is imported at start: an import hook waits for the notebook to
import Data Lab's ``dl`` modules or ``sparcl.client``, and applies
:func:`meridian.noirlab.configure_dl` or :func:`~meridian.noirlab.configure_sparcl` right
after each is loaded, so that a cell like Data Lab's own::

    from dl import queryClient as qc
    qc.query(sql="SELECT ...")

runs against ``MERIDIAN_URL`` with ``MERIDIAN_TOKEN``, with no login typed. Without
``MERIDIAN_URL`` in the environment, nothing is changed.
"""

import importlib.abc
import os
import sys
import threading
import warnings

CONFIG_LINE = 'c.InteractiveShellApp.extensions.append("meridian.kernel")'
CONFIG = f"""# Written by `python -m meridian.kernel install` (Meridian's scripts/notebooks-setup.sh):
# every kernel of this environment loads meridian.kernel, which points Data Lab's `dl`
# and `sparclclient` at MERIDIAN_URL with MERIDIAN_TOKEN when they are imported.
{CONFIG_LINE}
"""

_state = threading.local()


def _watched(name):
    return name == "dl" or name.startswith("dl.") or name == "sparcl.client"


def _after_import(name):
    """Configures the clients once module ``name`` has been executed."""
    if not os.environ.get("MERIDIAN_URL"):
        return
    from meridian import noirlab

    try:
        if name == "sparcl.client":
            noirlab.configure_sparcl()
        else:
            noirlab.configure_dl()
    except Exception as e:  # never break the user's import
        warnings.warn(f"meridian: {name} could not be pointed at Meridian: {e}", stacklevel=2)


class _Loader(importlib.abc.Loader):
    """A module's own loader, followed by the configuration."""

    def __init__(self, inner, name):
        self._inner = inner
        self._name = name

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        # The module's spec names this loader; tools that look for the file's own loader
        # (source for tracebacks, resources) are answered by the inner one.
        self._inner.exec_module(module)
        _after_import(self._name)

    def __getattr__(self, key):
        return getattr(self._inner, key)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the watched modules with the other finders, and wraps their loaders."""

    def find_spec(self, fullname, path, target=None):
        if not _watched(fullname) or getattr(_state, "busy", False):
            return None
        _state.busy = True
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            _state.busy = False
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, fullname)
        return spec


def install_hook():
    """Installs the import hook (once), and configures what is already imported."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    if any(_watched(n) for n in list(sys.modules)):
        if "sparcl.client" in sys.modules:
            _after_import("sparcl.client")
        if any(n.startswith("dl.") for n in list(sys.modules)):
            _after_import("dl")


def load_ipython_extension(ipython):
    install_hook()


def install(prefix=None):
    """Writes ``<prefix>/etc/ipython/ipython_kernel_config.py`` (``prefix``: this
    environment's ``sys.prefix``) so that its kernels load this extension. An existing
    file is kept, with the line added when missing. Returns the file's path."""
    prefix = prefix or sys.prefix
    d = os.path.join(prefix, "etc", "ipython")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "ipython_kernel_config.py")
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if CONFIG_LINE in text:
            return path
        text = text.rstrip("\n") + "\n\n" + CONFIG
    else:
        text = CONFIG
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m meridian.kernel install")
    print(install())
