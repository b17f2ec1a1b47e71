"""Check an export as its users will load it: sentence-transformers in a fresh interpreter where `import poolattn`
fails (as on a machine without poolattn), so the folder must carry everything it needs."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

LOADER = textwrap.dedent("""
    import json, sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "poolattn" or name.startswith("poolattn."):
                raise ImportError("poolattn is not installed here")
    sys.meta_path.insert(0, Block())
    from sentence_transformers import SentenceTransformer
    jobs = json.loads(sys.argv[1])
    out = {}
    for name, (folder, texts, prompt) in jobs.items():
        m = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
        out[name] = {"plain": m.encode(texts).tolist(), "prompted": m.encode(texts, prompt_name=prompt).tolist()}
    print("RESULT" + json.dumps(out))
""")


def encode_without_poolattn(jobs: dict[str, tuple[str, list[str], str]], timeout: float = 600) -> dict[str, dict]:
    """{name: (export folder, texts, prompt name)} -> {name: {"plain": vectors, "prompted": vectors}}, each folder
    loaded by SentenceTransformer(folder, trust_remote_code=True) with poolattn unimportable."""
    res = subprocess.run([sys.executable, "-c", LOADER, json.dumps(jobs)], capture_output=True, text=True,
                         timeout=timeout, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, cwd="/")
    if res.returncode != 0:
        raise RuntimeError(f"loading the export(s) without poolattn failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.split("RESULT", 1)[1])
