# check script: the answer ($1) equals the reference solution's output ($2), whitespace-trimmed
import sys

sys.exit(0 if len(sys.argv) > 2 and sys.argv[1].strip() == sys.argv[2].strip() else 1)
