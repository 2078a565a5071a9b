"""Sharded evaluation: `eval` and `bench` under torchrun (2 processes, gloo, CPU) give the same
numbers as one process, to the last bit: every per-image NLL and every total."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import job_failure
from click.testing import CliRunner
from PIL import Image

from snailcompress.bench.harness import BenchOptions, run_benchmark
from snailcompress.cli import main
from snailcompress.distributed import batch_share, gather, share


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three small RGB PNGs of different sizes; held out as a test split they give 8x8 tiles."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    for k, (height, width) in enumerate(((24, 16), (9, 13), (16, 24))):
        yy, xx = np.mgrid[0:height, 0:width]
        image = np.stack([(yy * 9 + k * 40) % 256, (xx * 7 + 30) % 256, (yy + xx) * 5 % 256], -1)
        image = np.clip(image + rng.integers(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"p{k}.png")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    """`snailcompress ARGS` in `processes` processes on the CPU (gloo), as one process runs it here."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "snailcompress.cli", *args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, job_failure(done.stderr)
    return done


def test_shares_are_whole_batches_in_order():
    """Every image in exactly one share, in rank order; each share starts on a batch boundary, so each
    image is scored in the batch one process scores it in."""
    for n in (1, 5, 7, 32, 33):
        for batch in (1, 2, 3, 32):
            for world in (1, 2, 3, 8):
                shares = [batch_share(n, batch, rank, world) for rank in range(world)]
                assert [i for s in shares for i in s] == list(range(n))
                assert all(s.start % batch == 0 for s in shares if len(s))
                batches = [len(range(s.start, s.stop, batch)) for s in shares]
                assert max(batches) - min(batches) <= 1
    assert [share(5, rank, 2) for rank in range(2)] == [range(0, 2), range(2, 5)]
    values = np.array([0.1, 0.2, 0.3])
    assert gather(values) is not None and np.array_equal(gather(values), values)  # no process group: as they are


FOLDER_TILES = ["--dataset", "folder", "--crop", "8", "--scales", "1", "--holdout", "p0,p2"]


@pytest.mark.slow
def test_eval_two_processes_print_what_one_does(photos):
    args = ["eval", *FOLDER_TILES, "--data-dir", str(photos), "--model", "pixelsnail-tiny", "--batch-size", "4",
            "--device", "cpu"]
    one = CliRunner().invoke(main, args)
    assert one.exit_code == 0, one.output
    two = torchrun(args)
    assert two.stdout.count("bits/dim") == 1, two.stdout  # rank 0 prints, rank 1 exits quietly
    assert two.stdout.strip() == one.stdout.strip() + ", 2 processes"
    assert "over 12 images" in one.stdout  # 6 + 6 tiles of 8x8: 3 batches of 4, shared 2 + 1


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tiles", "whole"])
def test_bench_two_processes_give_one_process_numbers_exactly(photos, tmp_path, layout):
    """The NLL rows' totals and per-image values of 2 processes are one process's, bit for bit; rank 0
    alone codes, runs the codec and writes the report."""
    models = ["pixelsnail-tiny"] + (["pixelcnnpp-tiny"] if layout == "tiles" else [])
    tiles = {"crop": 8, "scales": (1.0,), "holdout": ("p0", "p2")}
    one = BenchOptions(dataset="folder", data_dir=photos, models=models, codecs="png", coded_limit=1, batch_size=5,
                       crops=layout == "tiles", data_options=tiles if layout == "tiles" else {}, progress=False,
                       out=tmp_path / "one")  # one process, on the CPU
    run_benchmark(one, log=lambda line: None)
    data = FOLDER_TILES if layout == "tiles" else ["--dataset", "folder"]
    two = torchrun(["bench", *data, "--data-dir", str(photos), *(a for m in models for a in ("--model", m)),
                    "--codecs", "png", "--coded-limit", "1", "--batch-size", "5", "-q", "--out", str(tmp_path / "two")])
    assert two.stdout.count("report written to") == 1, two.stdout

    tables = [pd.read_csv(tmp_path / out / "summary.csv").set_index("method") for out in ("one", "two")]
    nll = tables[0].index[tables[0]["kind"] == "model-nll"]
    assert sorted(nll) == sorted(models)
    for column in ("bits_per_subpixel", "images", "subpixels"):
        assert tables[0].loc[nll, column].tolist() == tables[1].loc[nll, column].tolist(), column  # exact
    # the coded files and the codec are rank 0's: the same bytes
    assert tables[0]["total_bytes"].dropna().to_dict() == tables[1]["total_bytes"].dropna().to_dict()

    per_image = []
    for out in ("one", "two"):
        with h5py.File(tmp_path / out / "per_image.h5", "r") as f:
            per_image.append({f[k].attrs["method"]: f[k][()] for k in f})
            processes = f.attrs["processes"]
        assert processes == (1 if out == "one" else 2)
    assert per_image[0].keys() == per_image[1].keys()
    for method in per_image[0]:
        assert per_image[0][method].tobytes() == per_image[1][method].tobytes(), method  # bit for bit, in order
    assert len(per_image[0]["pixelsnail-tiny"]) == (12 if layout == "tiles" else 3)
