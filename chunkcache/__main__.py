import sys

from chunkcache.cli import main

sys.exit(main())
