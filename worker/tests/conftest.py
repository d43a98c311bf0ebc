import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

# Case files are inputs of stepped runs, not tests of this suite.
collect_ignore = ["cases", "real_suites.py", "run_stepped.py"]
