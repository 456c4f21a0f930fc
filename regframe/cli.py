"""Command line: LightningCLI for training (``fit``/``validate``/``test``/``predict``) plus the tools
of :mod:`regframe.tools` (``regframe register``, ``evaluate``, ``apply``, ``compare``, ``data``).

``regframe``, ``lightning`` and ``python -m regframe`` all start :func:`main`.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from regframe.errors import RegframeInputError
from regframe.methods.base import NonFiniteLossError
from regframe.plugins import import_plugins
from regframe.run_config import RunConfigCallback, continue_wandb_run
from regframe.tools import TOOLS, run_tool


def multiply(*factors: int | float) -> int | float:
    """The ``${mul:a,b,...}`` resolver of experiment configs: the product of its arguments, e.g.
    ``trainer.max_epochs: ${mul:${..model.init_args.stages},${..model.init_args.epochs_per_stage}}``."""
    return math.prod(factors)


def add(*terms: int | float) -> int | float:
    """The ``${add:a,b,...}`` resolver: the sum of its arguments (e.g. JRSS's stage plan)."""
    return sum(terms)


OmegaConf.register_resolver("mul", multiply, replace=True, annotation_validation="error")
OmegaConf.register_resolver("add", add, replace=True, annotation_validation="error")


class RegframeCLI(LightningCLI):
    """LightningCLI with regframe's defaults: any LightningModule / LightningDataModule by
    ``class_path``, seed 0, a Rich progress bar, and a per-run config that never collides.

    Configs may use OmegaConf interpolation (``${mul:a,b}``, ``${..model.init_args.stages}``); it is
    resolved once, after all ``--config`` files and command-line overrides are merged (jsonargparse's
    ``omegaconf+`` mode), so an overlay that changes ``stages`` also changes every value derived from
    it. Paths are relative (``..`` = the config's top level), because under a subcommand the whole
    config sits below ``fit.``/``validate.``/... when it is resolved.
    """

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        import_plugins()
        kwargs.setdefault("save_config_callback", RunConfigCallback)
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf+"})
        super().__init__(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            args=args,
            **kwargs,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse as LightningCLI does; an interpolation that cannot be resolved is a usage error
        naming the option."""
        try:
            super().parse_arguments(parser, args)
        except InterpolationResolutionError as err:
            message = str(err).splitlines()[0]
            parser.error(f"{err.full_key}: {message} (interpolation paths are relative: "
                         "${..model.init_args.stages} in a trainer option)")

    def before_instantiate_classes(self) -> None:
        """``fit --ckpt_path X`` continues the W&B run that wrote ``X`` (before any logger exists)."""
        if self.subcommand == "fit":
            continue_wandb_run(self.config.fit)

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        """Add a Rich progress bar unless the config disables progress bars or brings its own."""
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [RichProgressBar(leave=True)]}
        return super().instantiate_trainer(**kwargs)


def default_wandb_offline() -> None:
    """W&B works without an account: offline unless the user configured credentials or a mode."""
    if "WANDB_MODE" in os.environ or "WANDB_API_KEY" in os.environ:
        return
    netrc = os.path.expanduser("~/.netrc")
    if os.path.isfile(netrc) and "api.wandb.ai" in open(netrc, encoding="utf-8", errors="ignore").read():
        return
    os.environ["WANDB_MODE"] = "offline"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``regframe`` and ``python -m regframe``."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if from_command_line else argv)
    default_wandb_offline()
    if argv and argv[0] in TOOLS:
        return run_tool(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print_tools()
    command = next((a for a in argv if a in RegframeCLI.subcommands()), "")
    try:
        RegframeCLI(args=None if from_command_line else argv)  # None: LightningCLI reads sys.argv itself
    except Exception as err:
        cause = reported_cause(err)
        if cause is None:
            raise
        print(f"regframe {command}: error: {cause}", file=sys.stderr)
        return 2 if isinstance(cause, RegframeInputError) else 1
    finally:
        finish_wandb_run()
    return 0


def reported_cause(err: BaseException) -> RegframeInputError | NonFiniteLossError | None:
    """The bad-input error (raised while the classes are built, where jsonargparse wraps it, or before
    training) or the non-finite-loss stop behind ``err``; ``None`` for any other failure."""
    while err is not None and not isinstance(err, (RegframeInputError, NonFiniteLossError)):
        err = err.__cause__
    return err


def print_tools() -> None:
    """The tools section of ``regframe --help``, printed above LightningCLI's own help."""
    width = max(len(name) for name in TOOLS)
    lines = [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in TOOLS.items()]
    print("regframe tools (regframe TOOL --help for options):", *lines, "",
          "Training and evaluation with Lightning (regframe SUBCOMMAND --config CONFIG.yaml):", sep="\n")


def finish_wandb_run() -> None:
    """Close the W&B run of a finished command, so the next command in the same process (a
    notebook, a test) starts its own run instead of appending to this one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def lightning_main() -> None:
    """Entry point of the ``lightning`` console script (``lightning fit --config ...``)."""
    sys.exit(main())
