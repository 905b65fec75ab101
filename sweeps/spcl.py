"""SPCL studies and searches: `python sweeps/spcl.py --study pacing_params --quick`.

Thin on purpose (`ray submit` uploads only this file; the engine is the installed `merc`
package): every option is documented by `--help` (merc/sweep/cli.py). The spec is
search_spaces/spcl.yaml: the SPCL training plug-in over four backbones (default MMGCN).
"""
import sys

from merc.sweep.cli import exit_process, model_script_main

if __name__ == "__main__":
    exit_process(model_script_main("spcl"))
