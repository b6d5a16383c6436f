"""The test run refuses network access: in this process and in notebook kernels."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from finetune_helpers.netguard import NetworkBlockedError

ROOT = Path(__file__).resolve().parents[1]


def test_outbound_connection_is_refused_loudly():
    with pytest.raises(NetworkBlockedError, match="network access blocked"):
        socket.create_connection(("93.184.216.34", 80), timeout=5)
    with pytest.raises(NetworkBlockedError, match="DNS look-up of 'example.com'"):
        socket.getaddrinfo("example.com", 443)


def test_loopback_is_allowed():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    client.close()
    server.close()


def test_a_notebook_that_reaches_the_network_fails_nbval(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent("""\
        import urllib.request
        urllib.request.urlopen("http://example.com", timeout=5).status"""),
        execution_count=1, outputs=[nbformat.v4.new_output(
            "execute_result", data={"text/plain": "200"}, execution_count=1)])]
    path = tmp_path / "reaches_network.ipynb"
    nbformat.write(nb, path)
    # The kernel inherits PYTHONPATH and FINETUNE_HELPERS_NO_NETWORK from conftest.py.
    out = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
                          "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(path)],
                         capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ),
                         timeout=300)
    assert out.returncode != 0
    assert "network access blocked" in out.stdout
