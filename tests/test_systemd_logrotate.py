"""config/logrotate/taskdash rotates a running daemon's [log] file: moved, then SIGHUP (as
``systemctl reload`` sends) and the daemon writes to a new file. Paths, user and the reload
command are pointed at the test's daemon; everything else is the shipped file."""

from __future__ import annotations

import getpass
import shutil
import subprocess
from pathlib import Path

from support import daemon_env, running_daemon, wait_for

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "logrotate" / "taskdash"


def test_logrotate_moves_the_file_and_the_daemon_reopens_it(tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate")
    assert logrotate, "logrotate is required (apt-get install logrotate; .ci/run)"
    logs = tmp_path / "log"
    logs.mkdir()
    log_file = logs / "taskdash.log"
    env = daemon_env(tmp_path, TASKDASH_LOG__FILE=str(log_file))
    with running_daemon(tmp_path, env) as daemon:
        assert daemon.proc is not None
        text = SHIPPED.read_text()
        user = getpass.getuser()
        for old, new in (
            ("/var/log/taskdash/*.log /var/log/taskdash-periodic/*.log", f"{logs}/*.log"),
            ("su taskdash taskdash", f"su {user} {user}"),
            ("create 0640 taskdash taskdash", f"create 0640 {user} {user}"),
            ("systemctl reload taskdash.service", f"kill -HUP {daemon.proc.pid}"),
        ):
            assert old in text, old
            text = text.replace(old, new)
        conf = tmp_path / "logrotate.conf"
        conf.write_text(text)
        run = subprocess.run(
            [logrotate, "-f", "-v", "-s", str(tmp_path / "state"), str(conf)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0 and "error" not in run.stderr.lower(), run.stderr
        rotated = [p for p in logs.iterdir() if p.name.startswith("taskdash.log-")]
        assert len(rotated) == 1 and "daemon_ready" in rotated[0].read_text()
        wait_for(lambda: log_file.exists() and "reload_requested" in log_file.read_text())
        assert daemon.stop() == 0
    assert "daemon_stopped" in log_file.read_text(), "the new file is the one written to"
