"""SoftHSM2 token set-up for development and tests, without a PIN on any command line.

``softhsm2-util --init-token`` reads the SO PIN and user PIN from the terminal when they are not
given as arguments (arguments would show in ``ps`` and shell history), so it is run here under a
pseudo-terminal and answered. Usage:

    python -m hsm.softhsm --label device-ca --pin-file var/hsm-pin --so-pin-file var/hsm-so-pin
"""
from __future__ import annotations

import argparse
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from hsm.config import random_pin


def write_config(directory: Path) -> Path:
    """``directory``/softhsm2.conf with its tokens in ``directory``/tokens (both made if absent; an
    existing configuration is kept); its path, for SOFTHSM2_CONF."""
    (directory / "tokens").mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    if not conf.exists():
        conf.write_text(f"directories.tokendir = {directory / 'tokens'}\n"
                        "objectstore.backend = file\nlog.level = ERROR\n")
    return conf


def token_labels(env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run(["softhsm2-util", "--show-slots"], capture_output=True, text=True, env=env).stdout
    return [m.strip() for m in re.findall(r"^\s*Label:\s*(.*)$", out, re.M) if m.strip()]


def init_token(label: str, pin: str, so_pin: str, env: dict[str, str] | None = None, timeout: float = 30) -> None:
    """Initialise a free SoftHSM slot as token ``label`` with the given PINs."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(["softhsm2-util", "--init-token", "--free", "--label", label],
                            stdin=secondary, stdout=secondary, stderr=secondary, env=env, close_fds=True,
                            start_new_session=True)
    os.close(secondary)
    answers = [so_pin, so_pin, pin, pin]
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(primary, 1024)
            except OSError:
                break
            output += chunk
            while answers and output.count(b"PIN:") > 4 - len(answers):
                os.write(primary, answers.pop(0).encode() + b"\n")
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0 or label not in token_labels(env):
        text = output.decode(errors="replace").replace(pin, "***").replace(so_pin, "***")
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
        raise RuntimeError(f"softhsm2-util could not initialise token {label!r}: {last[0].strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--pin-file", required=True, type=Path, help="user PIN (created with a random PIN if absent)")
    parser.add_argument("--so-pin-file", required=True, type=Path, help="SO PIN (created if absent)")
    args = parser.parse_args(argv)
    if args.label in token_labels():
        print(f"token {args.label!r} already initialised")
        return 0
    pins = [random_pin(path, 24) for path in (args.pin_file, args.so_pin_file)]
    try:
        init_token(args.label, pins[0], pins[1])
    except RuntimeError as exc:
        print(f"hsm: {exc}", file=sys.stderr)
        return 1
    print(f"token {args.label!r} initialised; user PIN in {args.pin_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
