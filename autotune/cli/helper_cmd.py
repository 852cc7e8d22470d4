"""`autotune helper`: run the privileged helper; `autotune helper check-policy FILE`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from autotune.cli.common import JsonOpt, RootOpt, fail, print_json

PolicyOpt = Annotated[
    Path | None,
    typer.Option("--policy", help="Root-owned TOML allowlist (e.g. /etc/autotune/policy.toml)."),
]


def register(app: typer.Typer) -> None:
    helper_app = typer.Typer(
        help="Privileged helper: applies only what a root-owned policy allows.",
        invoke_without_command=True,
        no_args_is_help=False,
    )

    @helper_app.callback()
    def serve(
        ctx: typer.Context,
        policy: PolicyOpt = None,
        socket_path: Annotated[str | None, typer.Option(
            "--socket", help="Unix socket to listen on (not needed under systemd socket activation).")] = None,
        root: RootOpt = None,
        state: Annotated[Path | None, typer.Option(
            "--state", help="JSON file remembering prior values this helper wrote over (root-owned dir).")] = None,
        socket_mode: Annotated[str, typer.Option("--socket-mode", help="Octal mode of the socket file.")] = "660",
        socket_group: Annotated[str | None, typer.Option(
            "--socket-group", help="Group owning the socket file (the agent's group, with mode 660).")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ) -> None:
        """Serve requests (root). Run `autotune helper check-policy FILE` to validate a policy."""
        if ctx.invoked_subcommand is not None:
            return
        import logging
        import os

        from autotune.errors import AutotuneError
        from autotune.helper.handler import Helper, Origins
        from autotune.helper.policy import load_policy
        from autotune.helper.server import serve as run_server
        from autotune.host import Host

        if policy is None:
            fail("--policy FILE is required to run the helper")
        try:
            mode = int(socket_mode, 8)
        except ValueError:
            fail(f"--socket-mode {socket_mode!r}: give an octal mode such as 660")
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if os.geteuid() != 0:
            fail("the helper must run as root (it writes kernel tunables); the agent itself does not")
        try:
            pol = load_policy(policy)
            for note in pol.notes:
                logging.getLogger("autotune.helper").warning("%s", note)
            helper = Helper(pol, Host(root, writable=True), origins=Origins(state))
            run_server(helper, socket_path=socket_path, socket_mode=mode,
                       socket_group=socket_group)
        except AutotuneError as err:
            fail(str(err))

    @helper_app.command("check-policy")
    def check_policy(
        file: Annotated[Path, typer.Argument(help="Policy TOML to validate.")],
        json_out: JsonOpt = False,
        no_owner_check: Annotated[bool, typer.Option(
            "--no-owner-check", help="Validate contents only (draft files not yet installed as root).")] = False,
    ) -> None:
        """Validate a policy file: ownership/permissions and contents. Exit 2 on any problem."""
        from autotune.errors import ConfigError
        from autotune.helper.policy import load_policy

        try:
            pol = load_policy(file, require_root_owned=not no_owner_check)
        except ConfigError as err:
            fail(str(err))
        if json_out:
            print_json(pol.model_dump(mode="json"))
            return
        typer.echo(f"{file}: OK")
        names = "".join(f" {k}={v}" for k, v in (("users", pol.peers.users), ("groups", pol.peers.groups)) if v)
        typer.echo(f"  peers: uids={pol.peers.uids} gids={pol.peers.gids}{names}")
        for note in pol.notes:
            typer.secho(f"  warning: {note}", fg="yellow")
        lim = pol.limits
        typer.echo(f"  limits: {lim.rate_per_s}/s burst {lim.burst}, max request {lim.max_request_bytes} B, "
                   f"idle timeout {lim.conn_timeout_s}s")
        for name, rule in sorted(pol.knob.items()):
            fields = {k: v for k, v in rule.model_dump().items() if v not in (None, [], {})}
            typer.echo(f"  knob {name}: {fields}")
        for name in sorted(pol.service):
            typer.echo(f"  service {name}")

    app.add_typer(helper_app, name="helper")
