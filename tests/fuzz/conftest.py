import sys
from pathlib import Path

# the harnesses and the reliability helpers are plain modules beside the tests
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
