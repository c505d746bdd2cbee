"""nbbridge.mixer: local and remote Jupyter kernels in one JupyterLab (``twistd nbbridge-mixer``).

A Jupyter-specific front built on `nbbridge.web`: it answers ``/api/kernelspecs``,
``/api/kernels`` and ``/api/sessions`` itself, mixing the local Jupyter's with every
remote's (remote kernelspecs prefixed ``gpu:python3``), proxies each kernel's ``channels``
WebSocket to the kernel's server, and everything else to the local Jupyter. Remotes are
reached through ``nbbridge.tunnel.AgentLink.endpoint(service)`` or at a URL. The kernel id
-> server table lives in a `nbbridge.store` store (docs/mixer.md).
"""
