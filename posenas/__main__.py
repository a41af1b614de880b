import sys

from posenas.cli import main

sys.exit(main())
