"""sedm: style-extracting diffusion models (STEDM) for computational pathology.

Every pipeline stage is a module with a ``sedm <command>`` entry point (see :mod:`sedm.cli`), so
the package runs without Snakemake; the workflow in ``workflow/`` only wires the commands together.
"""

__version__ = "0.1.0"
