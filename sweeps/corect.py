"""CORECT studies and searches: `python sweeps/corect.py --study window --quick`.

Thin on purpose (`ray submit` uploads only this file; the engine is the installed `merc`
package): every option is documented by `--help` (merc/sweep/cli.py). A sweep for another model
is this file with another name.
"""
import sys

from merc.sweep.cli import exit_process, model_script_main

if __name__ == "__main__":
    exit_process(model_script_main("corect"))
