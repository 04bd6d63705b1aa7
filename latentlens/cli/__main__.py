import sys

from latentlens.cli import main

sys.exit(main())
