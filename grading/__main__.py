import sys

from grading.quiz import main

sys.exit(main())
