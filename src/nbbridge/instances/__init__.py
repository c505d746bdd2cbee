"""nbbridge.instances: Jupyter servers started on demand, one per data file, on this machine.

The datalab daemon starts them itself (its ``subprocess`` launcher) and an agent starts them
for a datalab daemon that reaches it through the tunnel (its ``agent`` launcher): both build
on `JupyterProcesses`, which gives each instance its own directory, a free loopback port and
a random token passed in the environment (never on a command line), answers only once the
server answers ``/api/status``, and stops each one (and its kernels) without leaving a process
or a directory behind.
"""

from ._jupyter import InstanceStartError, JupyterProcesses, RunningJupyter
from ._remote import SERVICE, InstanceHost, RemoteError, start_remote, stop_remote

__all__ = [
    "SERVICE",
    "InstanceHost",
    "InstanceStartError",
    "JupyterProcesses",
    "RemoteError",
    "RunningJupyter",
    "start_remote",
    "stop_remote",
]
