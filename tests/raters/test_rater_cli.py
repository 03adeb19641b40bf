"""`tether raters init | add-rater | guidelines | import | export | serve` through `tether.cli.main`."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import httpx
from raterkit import make_queue

from tether.cli import main
from tether.data.preferences import write_comparisons
from tether.raters.accounts import Accounts
from tether.raters.db import Database, database_url
from tether.raters.security import load_or_create_secret
from tether.raters.service import RaterService


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_init_import_export_and_errors(capsys, tmp_path):
    project, queue = tmp_path / "p", tmp_path / "queue.jsonl"
    code, out, _ = run(capsys, "raters", "init", str(project), "--overlap", "1", "--base-url", "https://rate.example")
    assert code == 0 and re.search(r"https://rate\.example/invite/\S+ \(one use", out)
    code, out, _ = run(capsys, "raters", "add-rater", str(project), "alice")
    assert code == 0 and out.startswith("http://127.0.0.1:8000/invite/")
    write_comparisons(queue, make_queue(3))
    assert run(capsys, "raters", "import", str(project), str(queue))[1].startswith("imported 3 pairs")
    assert "0 pairs" in run(capsys, "raters", "import", str(project), str(queue))[1]
    guidelines = tmp_path / "g.md"
    guidelines.write_text("# New rules\n")
    assert run(capsys, "raters", "guidelines", str(project), str(guidelines), "--version", "2")[0] == 0
    # rate one pair through the service, then export both formats
    db = Database(database_url(project))
    service, accounts = RaterService(db, project), Accounts(db, load_or_create_secret(project))
    uid = accounts.add_user("alice")
    service.acknowledge(uid, "2")
    task = service.next_assignment(uid)
    service.submit_rating(uid, task.assignment_id, "right", 1.0, submission_id="cli-test-01")
    db.close()
    code, out, _ = run(capsys, "raters", "export", str(project), "out.jsonl")
    assert code == 0 and out.startswith("1 ratings written to") and (project / "exports" / "out.jsonl").exists()
    assert run(capsys, "raters", "export", str(project), "out.trl.jsonl", "--format", "trl")[0] == 0
    # user errors: exit 2 with one line, no traceback
    for argv, message in ((["export", str(project), "../escape.jsonl"], "name: '../escape.jsonl' is not a plain file name"),
                          (["import", str(tmp_path / "nope")], "required: queue"),
                          (["import", str(tmp_path / "nope"), str(queue)], "not a rater project"),
                          (["init", str(project)], "already holds project"),
                          (["serve"], "required"),
                          (["serve", str(project), "--host", "0.0.0.0"], "--public-url is required with --host '0.0.0.0'"),
                          (["bogus", str(project)], "invalid choice")):
        code, out, err = run(capsys, "raters", *argv)
        assert code == 2 and err.startswith("error: ") and message in err, (argv, err)


def test_init_with_password_file_and_serve(tmp_path):
    project, secret = tmp_path / "p", tmp_path / "pw"
    secret.write_text("a long enough password\n")
    assert main(["raters", "init", str(project), "--password-file", str(secret)]) == 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tether", "raters", "serve", str(project), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/api/login", json={"username": "admin", "password": "a long enough password"})
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "timeout"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["role"] == "admin"
    finally:
        proc.terminate()
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
