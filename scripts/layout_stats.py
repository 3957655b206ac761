"""Line-length percentiles and the longest functions of the exported library (toxigs/, _modidx aside).

    python scripts/layout_stats.py .              # this checkout
    python scripts/layout_stats.py <other tree>   # e.g. a worktree of an older commit, to compare
"""
import ast, sys
from pathlib import Path
root = Path(sys.argv[1])
lengths, functions = [], []
for path in sorted(root.glob("toxigs/*.py")):
    if path.name == "_modidx.py": continue
    text = path.read_text()
    lengths += [len(l) for l in text.splitlines() if l.strip()]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.append((node.end_lineno - node.lineno + 1, f"{path.stem}.{node.name}"))
lengths.sort()
pct = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]
print(f"non-empty lines {len(lengths)}, median {pct(0.5)}, p95 {pct(0.95)}, over 100: {sum(l > 100 for l in lengths)} "
      f"({sum(l > 100 for l in lengths) / len(lengths):.0%})")
print("longest functions:", sorted(functions, reverse=True)[:5])
