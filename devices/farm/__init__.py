"""An emulated board farm: Debian arm64 root file systems run under qemu-user, reached over SSH.

A board is a cached Debian root file system for the board's architecture (``rootfs``) with python3 and the
runtimes a board would have (aarch64 wheels of onnxruntime and TVM), mounted per board as an overlay, and an
OpenSSH server that lives in the board's own network namespace with its own address and a pinned host key.
Every session chroots into the board's file system, so every command a client runs there is the board's
aarch64 binary, executed by ``qemu-aarch64-static`` through binfmt_misc. The board's power comes from an
INA3221-shaped hwmon tree whose readings follow the board's measured CPU time (``power``: the power model).

Latency measured on such a board is *emulated* (qemu translates every instruction): the runner reports the
emulation, and profiles label those numbers ``emulated``; they are never comparable with native numbers.

Needs: root, binfmt_misc with a qemu-aarch64 entry (qemu-user-static, binfmt-support), mmdebstrap, iproute2,
overlayfs and OpenSSH's sshd. :func:`unavailable_reason` says what is missing.
"""

from edgekit.devices.farm.host import unavailable_reason

__all__ = ["unavailable_reason"]
