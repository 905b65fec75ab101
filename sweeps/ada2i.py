"""Ada2I studies and searches: `python sweeps/ada2i.py --study rank --quick`.

Thin on purpose (`ray submit` uploads only this file; the engine is the installed `merc`
package): every option is documented by `--help` (merc/sweep/cli.py). The spec is
search_spaces/ada2i.yaml: the Ada2I network with its gradient-modulation strategy `ada2i`.
"""
import sys

from merc.sweep.cli import exit_process, model_script_main

if __name__ == "__main__":
    exit_process(model_script_main("ada2i"))
