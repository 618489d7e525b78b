# Puts bindings/python on sys.path, so the tests import this checkout's binding, not an installed one.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
