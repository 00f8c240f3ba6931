import sys

from interactive.diffusion_chat.main import main

sys.exit(main())
