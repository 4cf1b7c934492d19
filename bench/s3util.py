"""Small boto3 helper for bench/run.sh. Endpoint and credentials come from the AWS_* env vars.

  s3util.py create-bucket BUCKET
  s3util.py upload-file BUCKET KEY PATH     # boto3 managed transfer = what `aws s3 cp` does
  s3util.py upload-stdin BUCKET KEY         # upload_fileobj(sys.stdin.buffer), multipart, streaming
  s3util.py object-bytes BUCKET             # total size of the artifacts (head_object each; manifests excluded)
  s3util.py clear BUCKET                    # delete every object
"""
import os
import sys

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
    )


def keys(s3, bucket):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def main():
    cmd, bucket, *rest = sys.argv[1:]
    s3 = client()
    if cmd == "create-bucket":
        s3.create_bucket(Bucket=bucket)
    elif cmd == "upload-file":
        key, path = rest
        # TransferConfig() defaults: 8 MiB threshold/chunks, 10 threads, as the AWS CLI.
        s3.upload_file(path, bucket, key, Config=TransferConfig())
    elif cmd == "upload-stdin":
        (key,) = rest
        s3.upload_fileobj(sys.stdin.buffer, bucket, key, Config=TransferConfig())
    elif cmd == "download":
        key, path = rest
        s3.download_file(bucket, key, path, Config=TransferConfig())
    elif cmd == "object-bytes":
        total, n = 0, 0
        for key in keys(s3, bucket):
            if key.endswith(".manifest.json"):
                continue
            total += s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
            n += 1
        print(f"{total} {n}")
    elif cmd == "clear":
        for key in list(keys(s3, bucket)):
            s3.delete_object(Bucket=bucket, Key=key)
    else:
        sys.exit(f"s3util: unknown command {cmd}")


if __name__ == "__main__":
    main()
