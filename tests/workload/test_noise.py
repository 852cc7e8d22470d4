"""Noisy neighbour reports its throughput."""

import json

from autotune.workload.noise import NoiseSpec, run_noise


def test_cpu_burner_reports_ops(tmp_path, capsys):
    path = tmp_path / "noise.json"
    rep = run_noise(NoiseSpec(cpu_workers=1, duration_s=0.6, interval_s=0.2, json_path=str(path)))
    assert rep.final and rep.ops_total > 0 and rep.ops_per_s > 0
    saved = json.loads(path.read_text())
    assert saved["final"] is True and saved["ops_total"] == rep.ops_total
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) >= 3
    assert [x["ops_total"] for x in lines] == sorted(x["ops_total"] for x in lines)


def test_memory_hog_touches_pages():
    rep = run_noise(NoiseSpec(cpu_workers=0, mem_mib=16, duration_s=0.5, interval_s=0.25),
                    echo=False)
    assert rep.mem_resident and rep.mem_passes >= 1
    assert rep.ops_total == 0


def test_rewrite_keeps_passing():
    rep = run_noise(NoiseSpec(cpu_workers=0, mem_mib=4, mem_rewrite=True, duration_s=0.5,
                              interval_s=0.5), echo=False)
    assert rep.mem_passes > 1


def test_streamer_reads_its_file_in_a_loop_and_removes_it(tmp_path):
    rep = run_noise(NoiseSpec(cpu_workers=0, stream_mib=4, stream_dir=str(tmp_path), duration_s=1.0,
                              interval_s=0.5), echo=False)
    assert rep.stream_mib_total > 4  # more than one pass over the 4 MiB file
    assert list(tmp_path.iterdir()) == []  # its file is gone
