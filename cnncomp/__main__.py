import sys

from cnncomp.cli import main

sys.exit(main())
