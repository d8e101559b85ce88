import sys

from metallmix.cli import main

sys.exit(main())
