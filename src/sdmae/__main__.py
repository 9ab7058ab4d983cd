import sys

from sdmae.cli import main

sys.exit(main())
