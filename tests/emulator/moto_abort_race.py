"""moto's AbortMultipartUpload fails with a 500 when a part upload to the same upload is being
handled at the same moment, and the upload stays.

Why it matters: it was the root cause of the rare leftover upload in the signal tests
(faults::sig*_aborts_everything_*). A signal cancels backhaul's part uploads on its side, but
requests already sent are still being handled by moto when the abort arrives. moto's abort
(`del bucket.multiparts[id]` -> FakeMultipart.dispose) iterates the upload's parts while the
part request's thread adds one: "RuntimeError: dictionary changed size during iteration",
answered 500, nothing deleted. The tests run with AWS_MAX_ATTEMPTS=1, so before backhaul
re-sent failed aborts the upload was left. AWS documents the same hazard for real S3 (parts in
progress "might or might not succeed ... it might be necessary to abort a given multipart
upload multiple times"), which is why backhaul now re-sends failed aborts and confirms each
with ListParts (src/storage/s3.rs, abort_confirmed).

Run: /opt/backhaul-venv/bin/python tests/emulator/moto_abort_race.py [ROUNDS]
Prints how many aborts failed and how many uploads were left; exit 0 either way (the race is
timing-dependent: on this 2-core machine about 1 abort in 60 fails).
"""
import socket
import subprocess
import sys
import tempfile
import threading
import time

import boto3
import botocore
from botocore.config import Config


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    log = tempfile.NamedTemporaryFile(prefix="moto-abort-race-", suffix=".log", delete=False)
    server = subprocess.Popen(
        [sys.executable.replace("python", "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"max_attempts": 1, "mode": "standard"}, max_pool_connections=20),
        )
        for _ in range(100):
            try:
                client.create_bucket(Bucket="abort-race")
                break
            except botocore.exceptions.EndpointConnectionError:
                time.sleep(0.1)
        body = b"x" * (5 << 20)
        failed = left = 0
        for i in range(rounds):
            key = f"k{i}"
            upload = client.create_multipart_upload(Bucket="abort-race", Key=key)["UploadId"]
            client.upload_part(Bucket="abort-race", Key=key, UploadId=upload, PartNumber=1, Body=body)

            def part(n: int) -> None:
                try:
                    client.upload_part(
                        Bucket="abort-race", Key=key, UploadId=upload, PartNumber=n, Body=body
                    )
                except botocore.exceptions.ClientError:
                    pass  # NoSuchUpload: the abort came first

            threads = [threading.Thread(target=part, args=(n,)) for n in (2, 3)]
            for t in threads:
                t.start()
            time.sleep(0.005 * (i % 20))  # vary where the abort lands
            try:
                client.abort_multipart_upload(Bucket="abort-race", Key=key, UploadId=upload)
            except botocore.exceptions.ClientError as e:
                failed += 1
                print(f"round {i}: abort answered {e.response['ResponseMetadata']['HTTPStatusCode']}")
            for t in threads:
                t.join()
            listed = client.list_multipart_uploads(Bucket="abort-race").get("Uploads", [])
            left += any(u["UploadId"] == upload for u in listed)
        print(f"{rounds} aborts with part uploads in progress: {failed} failed, {left} uploads left")
        print(f"moto's log (tracebacks): {log.name}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
