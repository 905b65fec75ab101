"""MultiDAG+CL studies and searches: `python sweeps/multidag.py --study buckets --quick`.

Thin on purpose (`ray submit` uploads only this file; the engine is the installed `merc`
package): every option is documented by `--help` (merc/sweep/cli.py). The spec is
search_spaces/multidag.yaml: the MultiDAG network with the bucket curriculum (strategy bucket_cl).
"""
import sys

from merc.sweep.cli import exit_process, model_script_main

if __name__ == "__main__":
    exit_process(model_script_main("multidag"))
