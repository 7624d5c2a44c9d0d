"""SSH to devices: connection pool, run, resumable verified push, host-key trust, credentials.

The public face of the transport; the engines (asyncssh, paramiko) and the push steps stay behind it.
"""

from fleetdesk.transport.asyncssh_transport import fetch_host_key
from fleetdesk.transport.hostkey import PublicKey, fingerprint, parse_public_key
from fleetdesk.transport.pool import SSHPool, run_many
from fleetdesk.transport.push import BLOCK_SIZE, LocalFile, digest_file, partial_path
from fleetdesk.transport.results import DeviceOutcome, FanOutResult, ProgressCallback, PushResult, RunResult
from fleetdesk.transport.session import ConnectionLostError, ConnectTimeoutError, PushVerifyError, RemoteWriteError
from fleetdesk.transport.shell import shell_join, shell_quote
from fleetdesk.transport.target import SSHTarget
from fleetdesk.transport.trust import check_host_key

__all__ = [
    "BLOCK_SIZE", "ConnectTimeoutError", "ConnectionLostError", "DeviceOutcome", "FanOutResult", "LocalFile",
    "ProgressCallback", "PublicKey", "PushResult", "PushVerifyError", "RemoteWriteError", "RunResult", "SSHPool",
    "SSHTarget", "check_host_key", "digest_file", "fetch_host_key", "fingerprint", "parse_public_key",
    "partial_path", "run_many", "shell_join", "shell_quote",
]
