import sys

from chunkcache.cli.main import main

sys.exit(main())
