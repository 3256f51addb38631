"""The memory check before a run: what one process needs, and the processes that share one machine's memory."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from conftest import CPU, tiny

from etrmtrm_cli.errors import ConfigError
from etrmtrm_cli.training import preflight

SEQ_LEN, PUZZLE_IDS = 100, 10


def test_processes_on_one_cpu_machine_share_its_memory() -> None:
    """Each process compared its own need with the whole machine's memory: two of them passed where one was refused."""
    exp = tiny("E0b", world_size=2)
    each = preflight.estimate_memory(exp, SEQ_LEN, PUZZLE_IDS, world_size=2).total_bytes
    with mock.patch.object(preflight, "available_bytes", return_value=int(1.5 * each)):
        preflight.check_memory(exp, SEQ_LEN, PUZZLE_IDS, CPU, world_size=2, local_world_size=1)  # one per machine
        with pytest.raises(ConfigError, match=r"GiB\) each, \d+\.\d GiB for the 2 processes on it, but cpu has"):
            preflight.check_memory(exp, SEQ_LEN, PUZZLE_IDS, CPU, world_size=2, local_world_size=2)
        # a GPU is each process's own
        preflight.check_memory(exp, SEQ_LEN, PUZZLE_IDS, torch.device("cuda", 0), world_size=2, local_world_size=2)
