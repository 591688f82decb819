"""``python -m fusionnet_tf`` runs the ``fusionnet`` command."""

import sys

from fusionnet_tf.cli import main

sys.exit(main())
