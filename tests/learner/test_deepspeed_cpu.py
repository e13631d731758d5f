"""DeepSpeed on CPU starts without JIT-compiling its shared-memory comm op (learner.policy.skip_shm_comm_op)."""

import subprocess
import sys
import textwrap
from pathlib import Path

from tiny_inputs import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_init_distributed_on_cpu_compiles_nothing(tmp_path):
    extensions = tmp_path / "torch_extensions"
    script = textwrap.dedent(f"""
        import os
        os.environ.update(TORCH_EXTENSIONS_DIR={str(extensions)!r}, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT="{free_port()}", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", GLOO_SOCKET_IFNAME="lo")
        import deepspeed
        from deepspeed.comm.torch import build_shm_op
        from learner.policy import skip_shm_comm_op
        skip_shm_comm_op()
        deepspeed.init_distributed(dist_backend="gloo", rank=0, world_size=1)
        assert build_shm_op() is None
        print("ok")
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
    assert not extensions.exists() or not any(extensions.rglob("*.so"))  # nothing built
