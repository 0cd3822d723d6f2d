import sys

from c3dnet.cli import main

sys.exit(main())
