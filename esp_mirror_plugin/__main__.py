import sys

from esp_mirror_plugin.cli import main

sys.exit(main())
