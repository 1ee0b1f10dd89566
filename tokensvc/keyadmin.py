"""``tokensvc keys {list,stage,activate,retire,rotate}``: the key ring's life cycle.

A key moves ``staged -> active -> retiring -> retired``, and signing and sealing keys move
together:

- ``stage`` adds a signing key (of ``tokens.algorithm``) and a sealing key, both ``staged``:
  published in the JWKS so verifiers and caches learn them before anything is signed.
- ``activate [KID]`` makes a staged key the one that signs (or seals) and moves the previous
  active key of the same use to ``retiring`` (``retiring_at`` = now). Without KID it takes the
  newest staged signing key and the newest staged sealing key; with a signing KID, the newest
  staged sealing key comes along.
- ``retire [KID]`` (without KID: every retiring key) takes a retiring key out of verification,
  unsealing and the JWKS. Its private key file is deleted, since it will never be needed again;
  its manifest record stays as history. It is refused until ``max_ttl + leeway +
  jwks_max_age`` seconds have passed since ``retiring_at``: until then a token signed (or
  sealed) just before the switch can still be valid, and a JWKS cache may still hold the old
  set. ``--force`` retires anyway and says which tokens that breaks. The grace period assumes
  every server reloads within ``jwks_max_age`` (``keys.reload_interval`` is far shorter).
- ``rotate`` = stage + activate + retire of the retiring keys past their grace (never forced).

Every command takes ``--keys-dir``, ``--config`` and ``--dry-run`` (print what would change,
write nothing). The passphrase, if any, comes from ``TOKENSVC_KEYS_PASSPHRASE``. Before a
command writes a manifest it loads the resulting ring exactly as a server would, so it never
leaves a ring behind that the servers refuse. Exit status: 0 done (or nothing to do), 1
refused (too early to retire, no such or no staged key), 2 configuration or key ring error.
Output never contains key material.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from tokensvc.config import load_config
from tokensvc.errors import ConfigError, KeyRingError
from tokensvc.keys import SigningAlgorithm
from tokensvc.keystore import (
    PASSPHRASE_ENV,
    SEALING_ALGORITHM,
    KeyRecord,
    KeyUse,
    Manifest,
    build_ring,
    generate_sealing_key,
    generate_signing_key,
    new_record,
    read_manifest,
    remove_key_file,
    ring_lock,
    write_manifest,
    write_sealing_key,
    write_signing_key,
)
from tokensvc.redacted import Secret

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_REFUSED",
    "activate_keys",
    "add_common_options",
    "list_keys",
    "register",
    "retire_keys",
    "rotate_keys",
    "stage_keys",
]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_ERROR = 2

Clock = Callable[[], float]


@dataclass(frozen=True)
class _Settings:
    """What the commands need from the configuration, resolved once."""

    directory: Path
    algorithm: SigningAlgorithm
    max_ttl: int
    leeway: int
    jwks_max_age: int
    passphrase: Secret | None = field(repr=False)

    @property
    def grace(self) -> int:
        """Seconds a retiring key must stay: any token it signed or sealed may live that long."""
        return self.max_ttl + self.leeway + self.jwks_max_age

    def safe_at(self, record: KeyRecord) -> float:
        """When a retiring key may be retired without breaking a valid token."""
        return (record.retiring_at or 0.0) + self.grace

    def tokens_valid_until(self, record: KeyRecord) -> float:
        """The latest expiry (plus leeway) of a token signed or sealed with this key."""
        return (record.retiring_at or 0.0) + self.max_ttl + self.leeway


class _Refused(Exception):
    """The command cannot be done now (exit 1); the message says why and what to do."""


@dataclass(frozen=True)
class _Change:
    before: KeyRecord | None  # None: a key this command creates
    after: KeyRecord


@dataclass
class _Plan:
    """The manifest a command would write, and what changes on the way there."""

    manifest: Manifest
    changes: list[_Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for stdout
    warnings: list[str] = field(default_factory=list)  # for stderr (forced retirements)

    def then(self, other: _Plan) -> _Plan:
        """This plan followed by ``other`` (computed on this plan's manifest)."""
        merged = {c.after.kid: c for c in self.changes}
        for change in other.changes:
            first = merged.get(change.after.kid)
            before = first.before if first is not None else change.before
            merged[change.after.kid] = _Change(before, change.after)
        return _Plan(
            other.manifest,
            list(merged.values()),
            self.notes + other.notes,
            self.warnings + other.warnings,
        )


# -- argument parsing -----------------------------------------------------------------------


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--keys-dir``, ``--config`` and ``--dry-run`` (shared by every keys command)."""
    parser.add_argument(
        "--keys-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="key ring directory (default: [keys] dir of the config, else ./keys)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=None,
        help="TOML config file: tokens.max_ttl, leeway, jwks_max_age, algorithm; keys.dir",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would change, write nothing"
    )


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``keys`` and its sub-commands; each leaf sets ``func(args) -> exit status``."""
    keys = subparsers.add_parser(
        "keys",
        help="manage the signing and sealing key ring",
        description=(
            "Manage the key ring. Life cycle: stage -> activate -> retire (rotate does all "
            f"three). A passphrase for the key files is read from {PASSPHRASE_ENV}."
        ),
    )
    commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    listing = commands.add_parser("list", help="show every key, its state and dates")
    add_common_options(listing)
    listing.set_defaults(func=list_keys)

    stage = commands.add_parser("stage", help="add a staged signing key and sealing key")
    add_common_options(stage)
    stage.set_defaults(func=stage_keys)

    activate = commands.add_parser(
        "activate", help="make a staged key active; the active one becomes retiring"
    )
    activate.add_argument("kid", nargs="?", metavar="KID", help="default: the newest staged")
    add_common_options(activate)
    activate.set_defaults(func=activate_keys)

    retire = commands.add_parser(
        "retire", help="retire retiring keys whose grace period is over"
    )
    retire.add_argument("kid", nargs="?", metavar="KID", help="default: every retiring key")
    retire.add_argument(
        "--force",
        action="store_true",
        help="retire even within the grace period (breaks tokens that are still valid)",
    )
    add_common_options(retire)
    retire.set_defaults(func=retire_keys)

    rotate = commands.add_parser(
        "rotate", help="stage + activate, and retire keys past their grace period"
    )
    add_common_options(rotate)
    rotate.set_defaults(func=rotate_keys)
    return keys


# -- commands -----------------------------------------------------------------------------------


def list_keys(args: argparse.Namespace, *, clock: Clock = time.time) -> int:
    """``keys list``: a table of every key (never key material); exit 0."""

    def run(settings: _Settings) -> int:
        manifest = read_manifest(settings.directory)
        now = clock()
        print(_table(manifest))
        for record in manifest.with_states(states=("retiring",)):
            safe_at = settings.safe_at(record)
            when = "now" if now >= safe_at else f"from {_utc(safe_at)} ({_until(safe_at, now)})"
            print(f"{record.kid}: safe to retire {when}")
        return EXIT_OK

    return _command("list", args, run)


def stage_keys(args: argparse.Namespace, *, clock: Clock = time.time) -> int:
    """``keys stage``: add a staged signing key and a staged sealing key."""
    return _change("stage", args, clock, _plan_stage, creates_ring=True)


def activate_keys(args: argparse.Namespace, *, clock: Clock = time.time) -> int:
    """``keys activate [KID]``: make staged keys active, the active ones retiring."""
    kid: str | None = args.kid
    return _change(
        "activate", args, clock, lambda m, s, now: _plan_activate(m, s, now, kid)
    )


def retire_keys(args: argparse.Namespace, *, clock: Clock = time.time) -> int:
    """``keys retire [KID] [--force]``: retire keys whose grace period is over."""
    kid: str | None = args.kid
    force: bool = args.force
    return _change(
        "retire", args, clock, lambda m, s, now: _plan_retire(m, s, now, kid, force=force)
    )


def rotate_keys(args: argparse.Namespace, *, clock: Clock = time.time) -> int:
    """``keys rotate``: stage + activate, then retire keys past their grace (never forced)."""
    return _change("rotate", args, clock, _plan_rotate, creates_ring=True)


def _command(name: str, args: argparse.Namespace, run: Callable[[_Settings], int]) -> int:
    """Resolve the settings, run, and turn errors into one stderr line and an exit status."""
    try:
        return run(_settings(args))
    except _Refused as err:
        print(f"tokensvc keys {name}: {err}", file=sys.stderr)
        return EXIT_REFUSED
    except (ConfigError, KeyRingError) as err:
        print(f"tokensvc keys {name}: {err}", file=sys.stderr)
        return EXIT_ERROR


def _change(
    name: str,
    args: argparse.Namespace,
    clock: Clock,
    planner: Callable[[Manifest, _Settings, float], _Plan],
    *,
    creates_ring: bool = False,
) -> int:
    dry_run: bool = args.dry_run

    def run(settings: _Settings) -> int:
        # Fail before locking, which would create the directory, if there is nothing to change.
        manifest = read_manifest(settings.directory, missing_ok=creates_ring)
        if dry_run:
            # No lock either: it would create the lock file, and a dry run writes nothing.
            plan = planner(manifest, settings, clock())
        else:
            with ring_lock(settings.directory):
                # Read again under the lock, and only then take the time: the plan is made
                # against the manifest it replaces, and a retiring key's grace period must
                # not start before the moment it really stopped being used.
                manifest = read_manifest(settings.directory, missing_ok=creates_ring)
                plan = planner(manifest, settings, clock())
                if plan.changes:
                    _apply(plan, settings)
        _report(plan, settings, dry_run=dry_run)
        return EXIT_OK

    return _command(name, args, run)


def _settings(args: argparse.Namespace) -> _Settings:
    config = load_config(args.config)
    directory: Path = args.keys_dir if args.keys_dir is not None else config.keys.dir
    passphrase = os.environ.get(PASSPHRASE_ENV)
    return _Settings(
        directory=directory,
        algorithm=config.tokens.algorithm,
        max_ttl=config.tokens.max_ttl,
        leeway=config.tokens.leeway,
        jwks_max_age=config.tokens.jwks_max_age,
        passphrase=Secret(passphrase) if passphrase else None,
    )


# -- plans (pure: manifest in, manifest out) ------------------------------------------------------


def _plan_stage(manifest: Manifest, settings: _Settings, now: float) -> _Plan:
    plan = _stage(manifest, settings, now)
    plan.notes.extend(
        f"note: {k.kid} was already staged; activate without KID takes the newest"
        for k in manifest.with_states(states=("staged",))
    )
    return plan


def _stage(manifest: Manifest, settings: _Settings, now: float) -> _Plan:
    taken = [k.kid for k in manifest.keys]
    sig = new_record("sig", settings.algorithm, now, taken=taken)
    seal = new_record("enc", SEALING_ALGORITHM, now, taken=[*taken, sig.kid])
    return _Plan(manifest.replaced(sig, seal), [_Change(None, sig), _Change(None, seal)])


def _newest_staged(manifest: Manifest, use: KeyUse, alg: str | None = None) -> KeyRecord | None:
    staged = [k for k in manifest.with_states(use=use, states=("staged",)) if alg in (None, k.alg)]
    return staged[-1] if staged else None


def _plan_activate(
    manifest: Manifest, settings: _Settings, now: float, kid: str | None
) -> _Plan:
    targets: list[KeyRecord] = []
    if kid is not None:
        record = manifest.get(kid)
        if record is None:
            raise _Refused(f"no key {kid} in {settings.directory}")
        if record.state != "staged":
            raise _Refused(f"{kid} is {record.state}; only a staged key can be activated")
        if record.use == "sig" and record.alg != settings.algorithm:
            # Activating it would leave the servers without a signer of their algorithm.
            raise _Refused(
                f"{kid} is an {record.alg} key but tokens.algorithm is {settings.algorithm}; "
                "change the configuration first"
            )
        targets.append(record)
        if record.use == "sig":
            seal = _newest_staged(manifest, "enc")
            if seal is not None:
                targets.append(seal)
    else:
        sig = _newest_staged(manifest, "sig", settings.algorithm)
        seal = _newest_staged(manifest, "enc")
        targets = [k for k in (sig, seal) if k is not None]
        if not targets:
            raise _Refused(
                f"no staged {settings.algorithm} signing key or sealing key in "
                f"{settings.directory}; run `tokensvc keys stage` first"
            )
    return _activate(manifest, targets, now)


def _activate(manifest: Manifest, targets: Sequence[KeyRecord], now: float) -> _Plan:
    changes: list[_Change] = []
    for target in targets:
        previous = manifest.active(target.use)
        if previous is not None:
            # The old key keeps verifying (and unsealing) while its tokens may be alive.
            changes.append(_Change(previous, replace(previous, state="retiring", retiring_at=now)))
        changes.append(_Change(target, replace(target, state="active", activated_at=now)))
    return _Plan(manifest.replaced(*(c.after for c in changes)), changes)


def _plan_retire(
    manifest: Manifest, settings: _Settings, now: float, kid: str | None, *, force: bool
) -> _Plan:
    if kid is not None:
        record = manifest.get(kid)
        if record is None:
            raise _Refused(f"no key {kid} in {settings.directory}")
        if record.state != "retiring":
            hint = "; activate another key first" if record.state == "active" else ""
            raise _Refused(f"{kid} is {record.state}; only a retiring key can be retired{hint}")
        targets = [record]
    else:
        targets = manifest.with_states(states=("retiring",))
        if not targets:
            return _Plan(manifest, notes=["no retiring keys: nothing to retire"])
    early = [k for k in targets if now < settings.safe_at(k)]
    if early and not force:
        # All or nothing: a partial retirement under exit status 1 would be hard to read.
        lines = "".join(f"\n  {k.kid}: {_too_early(k, settings, now)}" for k in early)
        raise _Refused(
            f"refusing to retire within the grace period (max_ttl + leeway + jwks_max_age = "
            f"{settings.grace} s); nothing changed:{lines}\n"
            "--force retires now, rejecting tokens that are still valid"
        )
    warnings = [_forced(k, settings, now) for k in early]
    return _retire(manifest, targets, now, warnings)


def _retire(
    manifest: Manifest, targets: Sequence[KeyRecord], now: float, warnings: list[str]
) -> _Plan:
    # file=None: the manifest stops naming the private file before it is deleted.
    changes = [_Change(k, replace(k, state="retired", retired_at=now, file=None)) for k in targets]
    return _Plan(manifest.replaced(*(c.after for c in changes)), changes, warnings=warnings)


def _plan_rotate(manifest: Manifest, settings: _Settings, now: float) -> _Plan:
    # Retire first, judged on the keys that were retiring before this rotation; the keys
    # this rotation moves to retiring start their grace period now.
    retiring = manifest.with_states(states=("retiring",))
    due = [k for k in retiring if now >= settings.safe_at(k)]
    plan = _retire(manifest, due, now, [])
    plan.notes.extend(
        f"{k.kid} stays retiring: {_too_early(k, settings, now)}"
        for k in retiring
        if k not in due
    )
    staged = _stage(plan.manifest, settings, now)
    new_keys = [c.after for c in staged.changes]
    return plan.then(staged).then(_activate(staged.manifest, new_keys, now))


# -- applying -----------------------------------------------------------------------------------


def _apply(plan: _Plan, settings: _Settings) -> None:
    """Write new key files, check the resulting ring, write the manifest, delete files.

    The order is what keeps the ring consistent after a crash: files before the manifest
    that names them, deletions after the manifest that stops naming them.
    """
    directory = settings.directory
    written: list[str] = []
    try:
        for change in plan.changes:
            record = change.after
            if change.before is not None or record.file is None:
                continue
            if record.use == "sig":
                key = generate_signing_key(settings.algorithm)
                write_signing_key(directory, record, key, settings.passphrase)
            else:
                write_sealing_key(directory, record, generate_sealing_key(), settings.passphrase)
            written.append(record.file)
        build_ring(
            directory,
            plan.manifest,
            algorithm=settings.algorithm,
            passphrase=settings.passphrase,
            require_usable=False,
        )
        write_manifest(directory, plan.manifest)
    except BaseException:
        # Remove the new files unless the manifest on disk names them: a failure after the
        # rename (syncing the directory) leaves the new manifest in place.
        try:
            named = {k.file for k in read_manifest(directory, missing_ok=True).keys}
        except KeyRingError:
            named = set(written)  # unsure: keeping a stray file beats breaking the ring
        for name in written:
            if name not in named:
                remove_key_file(directory, name)
        raise
    for change in plan.changes:
        if change.before is not None and change.before.file and change.after.file is None:
            remove_key_file(directory, change.before.file)


# -- output -------------------------------------------------------------------------------------


def _report(plan: _Plan, settings: _Settings, *, dry_run: bool) -> None:
    for warning in plan.warnings:
        print(f"warning{' (dry run)' if dry_run else ''}: {warning}", file=sys.stderr)
    if plan.changes:
        if dry_run:
            print(f"dry run, nothing written; would change the key ring in {settings.directory}:")
        else:
            print(f"key ring {settings.directory}:")
        rows = []
        for change in plan.changes:
            after = change.after
            label = after.kid
            if dry_run and change.before is None:
                label = f"(new {after.alg} key)"
            before = change.before.state if change.before is not None else "new"
            line = f"{before} -> {after.state}"
            if after.state == "retiring":
                line += f" (safe to retire from {_utc(settings.safe_at(after))})"
            elif after.state == "retired":
                line += " (private key file deleted)"
            rows.append((label, after.use, after.alg, line))
        print(_columns(rows, indent="  "))
    elif not plan.notes:
        print("nothing to change")
    for note in plan.notes:
        print(note)


def _too_early(record: KeyRecord, settings: _Settings, now: float) -> str:
    safe_at = settings.safe_at(record)
    doing, done = ("signing", "signed") if record.use == "sig" else ("sealing", "sealed")
    return (
        f"stopped {doing} at {_utc(record.retiring_at or 0.0)}; tokens {done} with it may "
        f"be valid until {_utc(settings.tokens_valid_until(record))}; "
        f"safe to retire from {_utc(safe_at)} ({_until(safe_at, now)})"
    )


def _forced(record: KeyRecord, settings: _Settings, now: float) -> str:
    # tokensvc keeps no list of issued tokens: the honest report is the window, not a count.
    issued_up_to = _utc(record.retiring_at or 0.0)
    valid_until = settings.tokens_valid_until(record)
    if now >= valid_until:
        return (
            f"{record.kid} is retired early: no token issued with it can still be valid, but "
            f"JWKS caches (max-age {settings.jwks_max_age} s) may list it until "
            f"{_utc(settings.safe_at(record))}"
        )
    effect = "are rejected" if record.use == "sig" else "can no longer be unsealed"
    return (
        f"{record.kid} is retired early: tokens issued up to {issued_up_to} with this key, "
        f"valid until {_utc(valid_until)}, {effect} from then on. tokensvc keeps no list of "
        "issued tokens, so how many of them are still in use is unknown."
    )


def _table(manifest: Manifest) -> str:
    header = ("KID", "USE", "ALG", "STATE", "CREATED", "ACTIVATED", "RETIRING", "RETIRED")
    rows = [header]
    for k in sorted(manifest.keys, key=lambda k: (k.created_at, k.use != "sig", k.kid)):
        rows.append(
            (k.kid, k.use, k.alg, k.state, _utc(k.created_at, short=True),
             _utc(k.activated_at, short=True), _utc(k.retiring_at, short=True),
             _utc(k.retired_at, short=True))
        )
    return _columns(rows) + "\n(times in UTC)"


def _columns(rows: Sequence[Sequence[str]], indent: str = "") -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _utc(when: float | None, *, short: bool = False) -> str:
    if when is None:
        return "-"
    moment = datetime.fromtimestamp(when, UTC)
    return moment.strftime("%Y-%m-%d %H:%M") if short else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _until(when: float, now: float) -> str:
    seconds = max(0, int(when - now + 0.999))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"in {hours}h {minutes:02d}m"
    return f"in {minutes}m {secs:02d}s"
