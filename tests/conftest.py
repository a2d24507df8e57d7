import sys
from pathlib import Path

# the finite-difference helpers in tests/gradcheck.py are shared by several test modules
sys.path.insert(0, str(Path(__file__).parent))
