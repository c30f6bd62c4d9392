"""OpenPGP keys and signatures made by the real `gpg`, as an operator makes them: a key in a
keyring of its own, its public key exported armored, files signed with `--detach-sign --armor`."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

GPG = shutil.which("gpg")


@dataclass
class GpgKey:
    home: Path  # GNUPGHOME of this key alone
    email: str
    public: Path  # the exported public key, armored: what --trust-pgp takes
    faked: tuple[str, ...] = ()  # gpg's clock for an expired key: it signs only while valid

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert GPG, "gpg is missing: `make test` installs it (Debian package gpg)"
        done = subprocess.run(
            [GPG, "--homedir", str(self.home), "--batch", "--yes", "--pinentry-mode", "loopback",
             "--passphrase", "", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, f"gpg {' '.join(args)}: {done.stderr}"
        return done

    def sign(self, file: Path, output: Path | None = None) -> Path:
        """`gpg --detach-sign --armor FILE`: FILE.asc unless `output` names another."""
        target = output or file.with_name(file.name + ".asc")
        self.run(
            *self.faked,
            "--local-user",
            self.email,
            "--detach-sign",
            "--armor",
            "--output",
            str(target),
            str(file),
        )
        return target


def make_key(folder: Path, name: str, algorithm: str = "default", expired: bool = False) -> GpgKey:
    """A signing key of `name` (<name@example.com>). `expired`: made in 2020, valid one day."""
    home = folder / f"{name}-gnupg"
    home.mkdir(parents=True, mode=0o700)
    faked = ("--faked-system-time", "20200101T000000!") if expired else ()
    key = GpgKey(home, f"{name}@example.com", folder / f"{name}.asc", faked)
    key.run(*faked, "--quick-gen-key", f"{name} <{key.email}>", algorithm, "sign", "1d" if expired else "1y")
    key.public.write_text(key.run("--armor", "--export", key.email).stdout)
    return key
