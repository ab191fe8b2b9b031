"""``bench.bench_rss.rss_by_part``: the daemon's resident memory split by what it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.bench_rss import PARTS, rss_by_part

SMAPS = """\
5592e7aa4000-5592e84a9000 rw-p 00000000 00:00 0 [heap]
Size:              10260 kB
Rss:                9672 kB
Pss:                9672 kB
7f2751400000-7f27516f3000 r--p 00000000 fe:00 6514655 /v/cryptography/hazmat/bindings/_rust.abi3.so
Size:               3020 kB
Rss:                2048 kB
7f27516f3000-7f2751e5f000 r-xp 002f2000 fe:00 6514655 /v/cryptography/hazmat/bindings/_rust.abi3.so
Rss:                5684 kB
7f275eb00000-7f275ee00000 rw-p 00000000 00:00 0
Rss:                3072 kB
7f2760000000-7f2760100000 r-xp 00000000 fe:00 1 /v/numpy.libs/libscipy_openblas64_.so
Rss:                1192 kB
7f2761000000-7f2761100000 r-xp 00000000 fe:00 2 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
Rss:                2536 kB
7f2762000000-7f2762100000 r-xp 00000000 fe:00 3 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1632 kB
7ffc48345000-7ffc48366000 rw-p 00000000 00:00 0 [stack]
Rss:                  76 kB
"""


def test_parts_from_a_sample() -> None:
    parts = rss_by_part(SMAPS)
    assert parts["cryptography"] == 2048 + 5684
    assert parts["heap"] == 9672 + 3072 + 76  # [heap], an anonymous mapping, [stack]
    assert parts["numpy"] == 1192
    assert parts["openssl_system"] == 2536
    assert parts["other"] == 1632
    assert set(parts) == {name for name, _ in PARTS} | {"heap", "other"}


def test_parts_add_up_to_the_rss_of_a_real_process() -> None:
    # a python with cryptography's AESGCM loaded: its _rust module counts as cryptography
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cryptography.hazmat.primitives.ciphers.aead import AESGCM\n"
        "status = Path('/proc/self/status').read_text()\n"
        "smaps = Path('/proc/self/smaps').read_text()\n"
        "rss = next(l.split()[1] for l in status.splitlines() if l.startswith('VmRSS'))\n"
        "sys.stdout.write(rss + '\\n' + smaps)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    rss_line, _, smaps = out.partition("\n")
    parts = rss_by_part(smaps)
    total = sum(parts.values())
    assert abs(total - int(rss_line)) <= max(256, int(rss_line) // 50), (total, rss_line)
    assert parts["cryptography"] > 1024  # its _rust module, which links its own OpenSSL
    assert parts["heap"] > 1024
    assert parts["python"] > 1024
    assert parts["numpy"] == 0
