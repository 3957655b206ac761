"""Exported lines over 100 columns, nbdev's generated `__all__` aside: each is printed, and the exit code is 1.

    python .ci/long_lines.py [FOLDER]      # default: toxigs/
"""
import sys
from pathlib import Path

LIMIT = 100


def long_lines(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.glob("*.py")):
        if path.name == "_modidx.py": continue  # nbdev's generated index
        in_all = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            in_all = in_all or line.startswith("__all__ = [")
            if in_all:
                in_all = not line.rstrip().endswith("]")
                continue
            if len(line) > LIMIT: found.append(f"{path}:{number}: {len(line)} columns")
    return found


if __name__ == "__main__":
    found = long_lines(Path(sys.argv[1] if len(sys.argv) > 1 else "toxigs"))
    print("\n".join(found) if found else f"every exported line fits {LIMIT} columns")
    sys.exit(1 if found else 0)
